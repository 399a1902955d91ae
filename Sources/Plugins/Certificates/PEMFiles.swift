import Foundation
import Kernel
import SwiftASN1
public import X509

/// Reading and writing the PEM files certificates live in, with errors that name the file.
public enum PEMFiles {
    /// Reads a file as UTF-8 text.
    public static func read(_ path: String, what: String) throws(PKIError) -> String {
        guard FileManager.default.fileExists(atPath: path) else {
            throw PKIError(.invalidFile, "\(what) \(path) does not exist; check the path in the config")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PKIError(.invalidFile, "\(what) \(path) cannot be read; check its permissions")
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Parses every certificate in PEM text (at least one).
    public static func certificates(pem: String, source: String) throws(PKIError) -> [Certificate] {
        let documents: [PEMDocument]
        do {
            documents = try PEMDocument.parseMultiple(pemString: pem)
        } catch {
            throw PKIError(.invalidFile, "\(source) is not valid PEM (\(error)); expected one or more -----BEGIN CERTIFICATE----- blocks")
        }
        guard !documents.isEmpty else {
            throw PKIError(.invalidFile, "\(source) holds no PEM certificate")
        }
        var certificates: [Certificate] = []
        for (index, document) in documents.enumerated() {
            guard document.discriminator == "CERTIFICATE" else {
                throw PKIError(
                    .invalidFile, "\(source): PEM block \(index + 1) is a \(document.discriminator), expected a CERTIFICATE")
            }
            do {
                certificates.append(try Certificate(derEncoded: document.derBytes))
            } catch {
                throw PKIError(.invalidFile, "\(source): PEM block \(index + 1) is not a valid X.509 certificate (\(error))")
            }
        }
        return certificates
    }

    /// Reads and parses every certificate in a PEM file.
    public static func certificates(atPath path: String, what: String) throws(PKIError) -> [Certificate] {
        try certificates(pem: read(path, what: what), source: "\(what) \(path)")
    }

    /// Reads a private key (PKCS#8 or SEC1 PEM) from a file.
    public static func privateKey(atPath path: String, what: String) throws(PKIError) -> Certificate.PrivateKey {
        let text = try read(path, what: what)
        do {
            return try Certificate.PrivateKey(pemEncoded: text)
        } catch {
            throw PKIError(.invalidFile, "\(what) \(path) is not a PEM private key (\(error)); expected PKCS#8 or SEC1 EC/RSA")
        }
    }

    /// One certificate as PEM text (with a trailing newline).
    public static func pem(_ certificate: Certificate) throws(PKIError) -> String {
        do {
            return try certificate.serializeAsPEM().pemString + "\n"
        } catch {
            throw PKIError(.invalidAuthority, "cannot encode certificate \(certificate.subject): \(error)")
        }
    }

    /// Writes `contents` to `path` with `permissions`, atomically.
    static func write(_ contents: String, to path: String, permissions: Int) throws(PKIError) {
        do {
            try Data(contents.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
            try FileManager.default.setAttributes([.posixPermissions: permissions], ofItemAtPath: path)
        } catch {
            throw PKIError(.invalidFile, "cannot write \(path): \(error)")
        }
    }
}

extension Certificate {
    /// The certificate's URI SANs.
    var uriSANs: [String] {
        guard let names = try? extensions.subjectAlternativeNames else { return [] }
        return names.compactMap { name in
            if case .uniformResourceIdentifier(let uri) = name { return uri }
            return nil
        }
    }

    /// Serial number as lower-case hex without separators.
    var serialHex: String {
        serialNumber.bytes.map { byte in
            let digits = String(byte, radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }.joined()
    }

    /// Whether the certificate's basic constraints say it is a CA.
    var isCertificateAuthority: Bool {
        guard let constraints = try? extensions.basicConstraints else { return false }
        if case .isCertificateAuthority = constraints { return true }
        return false
    }

    /// Whether the certificate signed itself (subject = issuer and its key verifies its signature).
    var isSelfSigned: Bool {
        subject == issuer && publicKey.isValidSignature(signature, for: self)
    }
}

extension CertificateDetails {
    /// Every certificate in `pems` (each may hold several), parsed for `/config_dump`; text
    /// that does not parse is left out, since it was verified when it was stored.
    static func parsing(_ pems: [String]) -> [CertificateDetails] {
        pems.flatMap { pem -> [CertificateDetails] in
            guard let certificates = try? PEMFiles.certificates(pem: pem, source: "certificate") else { return [] }
            return certificates.compactMap { certificate in
                guard let text = try? PEMFiles.pem(certificate) else { return nil }
                return CertificateDetails(
                    pem: text, serialNumber: certificate.serialDecimal,
                    notBefore: certificate.notValidBefore, notAfter: certificate.notValidAfter)
            }
        }
    }
}

extension Certificate {
    /// Serial number in decimal (the DER integer's bytes, big-endian and unsigned), as
    /// ztunnel's config dump writes it.
    var serialDecimal: String {
        var number = Array(serialNumber.bytes.drop { $0 == 0 })
        guard !number.isEmpty else { return "0" }
        var digits: [UInt8] = []
        // Long division by 10 until nothing is left; each remainder is the next digit.
        while !number.isEmpty {
            var remainder = 0
            var quotient: [UInt8] = []
            quotient.reserveCapacity(number.count)
            for byte in number {
                let value = remainder << 8 | Int(byte)
                let digit = value / 10
                remainder = value % 10
                if !quotient.isEmpty || digit != 0 { quotient.append(UInt8(digit)) }
            }
            digits.append(UInt8(remainder))
            number = quotient
        }
        return String(digits.reversed().map { Character(UnicodeScalar($0 + 48)) })
    }
}
