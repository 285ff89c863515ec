//! The contract version: which `drover:plugin` WIT this host implements, and which
//! versions a plugin may declare. Read by the manifest (a plugin's declaration) and by
//! capabilities (what each contract version offers), so it lives apart from both.

/// The contract version this host implements; plugins must declare a compatible one.
pub const CONTRACT: &str = "0.1.0";

/// Whether a plugin's contract version can run on this host: the same 0.minor (semver
/// for 0.x), any patch. Accepts `0.1` and `0.1.3`.
pub fn contract_compatible(version: &str) -> bool {
    let full = if version.matches('.').count() == 1 { format!("{version}.0") } else { version.to_string() };
    let (Ok(v), Ok(host)) = (semver::Version::parse(&full), semver::Version::parse(CONTRACT)) else {
        return false;
    };
    v.major == host.major && (host.major > 0 || v.minor == host.minor)
}
