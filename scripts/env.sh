# Sourced by the other scripts: a PATH on which cargo is found on a fresh
# machine (rustup's in ~/.cargo/bin, else Debian's), and quiet backtraces.
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"
command -v cargo >/dev/null || export PATH="/usr/bin:$PATH"
export RUST_BACKTRACE="${RUST_BACKTRACE:-0}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
