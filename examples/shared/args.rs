//! The benchmark examples' flags (`speed`, `layers`): `--name value` pairs, no parser crate.

/// The value after `name` on the command line, or `default` when the flag is absent.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}
