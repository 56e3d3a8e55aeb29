//! `visor_nif`: the rustler bridge between Elixir (`Visor.Native`) and the
//! `vsr` protocol core.
//!
//! For now it is deliberately thin: enough to prove that the NIF builds,
//! loads on OTP 25 (NIF 2.16) and reaches `vsr`. The engine threads and
//! resources arrive with the real bridge. Every function here returns in
//! microseconds and never panics: a wrong argument type is rejected by
//! rustler's decoder as `badarg`, which Elixir raises as `ArgumentError`.

use rustler::{Binary, Env, NewBinary};

/// Version of the Elixir <-> NIF interface. Bump it whenever a NIF's
/// signature or meaning changes, so a stale `.so` is detected at once.
const PROTOCOL_VERSION: u32 = 1;

#[rustler::nif]
fn protocol_version() -> u32 {
    PROTOCOL_VERSION
}

/// The 128-bit checksum `vsr` uses for messages and the hash chain, as 16
/// little-endian bytes (the byte order `vsr` puts on the wire).
#[rustler::nif]
fn checksum<'a>(env: Env<'a>, bytes: Binary<'a>) -> Binary<'a> {
    let sum = vsr::checksum(bytes.as_slice()).to_le_bytes();
    let mut out = NewBinary::new(env, sum.len());
    out.as_mut_slice().copy_from_slice(&sum);
    out.into()
}

rustler::init!("Elixir.Visor.Native");
