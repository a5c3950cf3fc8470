//! The netfab CNI plugin executable: reads the CNI_* environment and the
//! network configuration on stdin, prints the result or a CNI error on
//! stdout, and exits non-zero on error.
use std::io::Read;

fn main() {
    let mut stdin = Vec::new();
    let env = netfab::cni::Env::from_process();
    let (code, out) = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => netfab::cni::run(&env, &stdin),
        Err(e) => (
            1,
            netfab::cni::types::CniError::new(netfab::cni::types::code::IO, "cannot read stdin")
                .details(e.to_string())
                .to_json("1.1.0")
                .to_string(),
        ),
    };
    if !out.is_empty() {
        println!("{out}");
    }
    std::process::exit(code);
}
