import AmbitCLI

/// The first-party `ambit` binary: the shared command line over the first-party plugins.
/// (Not `main.swift`: an async entry point needs `@main`, which a file of that name
/// cannot carry.)
@main
enum AmbitMain {
    static func main() async {
        await Ambit.main(registry: FirstPartyPlugins.registry)
    }
}
