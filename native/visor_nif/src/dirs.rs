//! Directories made durable, for the files Elixir writes beside the
//! stores (a keyed group's record, the formation record, the tombstones):
//! Erlang's `file` module cannot sync a directory, and POSIX makes a new,
//! renamed or removed directory entry durable only once the directory
//! holding it is synced. Both calls run on a dirty I/O scheduler (an
//! `fsync` may take milliseconds), never on a normal one.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustler::{Atom, Binary, Encoder, Env, Term};

mod posix {
    rustler::atoms! {
        eacces, eperm, enoent, enotdir, eexist, eisdir, enospc, edquot, erofs,
        eio, enametoolong, eloop, emlink, emfile, enfile, enomem, einval, ebusy,
        exdev, eagain, eintr, unknown,
    }
}

/// The reason as `File.posix()` names it (`:file.format_error/1` reads
/// it), so that Elixir reports these errors as it reports its own.
fn posix(e: &io::Error) -> Atom {
    // vsr_storage's own refusals carry a kind, not an errno.
    match e.kind() {
        io::ErrorKind::InvalidInput if e.raw_os_error().is_none() => return posix::einval(),
        io::ErrorKind::NotADirectory if e.raw_os_error().is_none() => return posix::enotdir(),
        _ => {}
    }
    match e.raw_os_error() {
        Some(libc::EACCES) => posix::eacces(),
        Some(libc::EPERM) => posix::eperm(),
        Some(libc::ENOENT) => posix::enoent(),
        Some(libc::ENOTDIR) => posix::enotdir(),
        Some(libc::EEXIST) => posix::eexist(),
        Some(libc::EISDIR) => posix::eisdir(),
        Some(libc::ENOSPC) => posix::enospc(),
        Some(libc::EDQUOT) => posix::edquot(),
        Some(libc::EROFS) => posix::erofs(),
        Some(libc::EIO) => posix::eio(),
        Some(libc::ENAMETOOLONG) => posix::enametoolong(),
        Some(libc::ELOOP) => posix::eloop(),
        Some(libc::EMLINK) => posix::emlink(),
        Some(libc::EMFILE) => posix::emfile(),
        Some(libc::ENFILE) => posix::enfile(),
        Some(libc::ENOMEM) => posix::enomem(),
        Some(libc::EINVAL) => posix::einval(),
        Some(libc::EBUSY) => posix::ebusy(),
        Some(libc::EXDEV) => posix::exdev(),
        Some(libc::EAGAIN) => posix::eagain(),
        Some(libc::EINTR) => posix::eintr(),
        _ => posix::unknown(),
    }
}

fn answer<'a>(env: Env<'a>, result: io::Result<()>) -> Term<'a> {
    match result {
        Ok(()) => crate::atoms::ok().encode(env),
        Err(e) => (crate::atoms::error(), posix(&e)).encode(env),
    }
}

/// A path as the bytes Elixir holds (not necessarily UTF-8). An empty
/// one, or one holding a NUL byte, names no file: `:einval`.
fn path(bytes: &[u8]) -> io::Result<&Path> {
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(Path::new(std::ffi::OsStr::from_bytes(bytes)))
}

/// `:ok` once `dir` and its missing ancestors exist, the entry of each
/// from `root` down durable (`vsr_storage::create_dir_durably`), or
/// `{:error, posix}` (`:einval` for a `root` that is not `dir` or one of
/// its ancestors).
#[rustler::nif(schedule = "DirtyIo")]
fn nif_create_dir<'a>(env: Env<'a>, dir: Binary<'a>, root: Binary<'a>) -> Term<'a> {
    let result = path(dir.as_slice()).and_then(|dir| {
        let root = path(root.as_slice())?;
        vsr_storage::create_dir_durably(dir, root)
    });
    answer(env, result)
}

/// `:ok` once the entries of the directory `dir` are durable
/// (`vsr_storage::sync_dir`), or `{:error, posix}`.
#[rustler::nif(schedule = "DirtyIo")]
fn nif_sync_dir<'a>(env: Env<'a>, dir: Binary<'a>) -> Term<'a> {
    answer(env, path(dir.as_slice()).and_then(vsr_storage::sync_dir))
}
