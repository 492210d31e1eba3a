fn main() -> std::process::ExitCode {
    agentsd::main()
}
