//! Store records across agent versions. Readers ignore fields they do not
//! know, so a newer writer may add fields freely; a field an older reader
//! must understand to stay safe comes with `min_agent_version`, and an
//! older agent refuses the whole record (never applies half of it). The
//! rule is written down in docs/control-plane.md ("Compatibility").

/// This agent's version, as published in its leases.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why this agent must refuse a record asking for `min`, if it must.
pub fn too_new(min: Option<&str>) -> Option<String> {
    too_new_for(min?, AGENT_VERSION)
}

fn too_new_for(min: &str, mine: &str) -> Option<String> {
    let ours = parse(mine).expect("the crate's own version is x.y.z");
    match parse(min) {
        Some(m) if m <= ours => None,
        Some(_) => Some(format!(
            "needs netfab agent {min} or newer (this agent is {mine}); not applied"
        )),
        None => Some(format!(
            "min_agent_version `{min}` is not a version x.y.z; not applied"
        )),
    }
}

/// `x.y.z`, ignoring a pre-release or build suffix.
fn parse(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let r = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_minimums_are_refused_with_both_versions() {
        assert_eq!(too_new_for("0.1.0", "0.1.0"), None);
        assert_eq!(too_new_for("0.0.9", "0.1.0"), None);
        assert_eq!(too_new_for("0.1.0-rc1", "0.1.0"), None);
        let why = too_new_for("0.2.0", "0.1.0").unwrap();
        assert!(why.contains("0.2.0") && why.contains("0.1.0"), "{why}");
        assert!(
            too_new_for("0.10.0", "0.9.0").is_some(),
            "numeric, not text"
        );
        assert!(too_new_for("soon", "0.1.0")
            .unwrap()
            .contains("not a version"));
        assert!(too_new_for("1.2", "0.1.0").is_some());
        assert_eq!(too_new(None), None);
        assert_eq!(too_new(Some(AGENT_VERSION)), None);
    }
}
