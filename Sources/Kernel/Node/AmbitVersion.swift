/// Ambit's version, following semantic versioning.
public enum AmbitVersion {
    /// The version of this build.
    public static let current = "0.1.0"
}
