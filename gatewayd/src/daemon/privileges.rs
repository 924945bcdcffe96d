//! Running as root outside systemd: bind first, then drop to an unprivileged user for good.
//!
//! Under systemd the unit's `User=` starts gatewayd unprivileged and none of this runs. Started as root by hand (or by
//! another init), gatewayd opens the store and binds every listener (ports below 1024 need root), hands the data
//! directory to `[gateway].user`, then drops: `setgroups` (the user's groups, e.g. dialout for serial ports) →
//! `setgid` → `setuid` → `no_new_privs`, and checks that `setuid(0)` now fails. glibc applies set*id calls to every thread
//! of the process. Serial devices are (re)opened by their driver tasks with the dropped identity, so the user needs the
//! device group (dialout) — the same as under systemd.
//!
//! Running as root without `[gateway].user` is refused unless `[gateway].allow_root = true`.

use std::ffi::CString;
use std::path::Path;

use nix::unistd::{Gid, Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "running as root without [gateway].user: set user = \"gatewayd\" (or allow_root = true to run as root anyway)"
    )]
    RootRefused,
    #[error("[gateway].user `{0}` does not exist (create it: systemd-sysusers, or useradd --system {0})")]
    UnknownUser(String),
    #[error("cannot drop privileges to `{user}`: {step}: {source}")]
    Drop {
        user: String,
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("privileges were not dropped: the process could become root again")]
    NotPermanent,
}

/// What to do about privileges, decided from the effective user and the configuration.
pub fn prepare(user: Option<&str>, allow_root: bool) -> Result<Option<User>, PrivilegeError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match user {
        None if allow_root => Ok(None),
        None => Err(PrivilegeError::RootRefused),
        Some(name) => match User::from_name(name) {
            Ok(Some(u)) => Ok(Some(u)),
            Ok(None) => Err(PrivilegeError::UnknownUser(name.to_owned())),
            Err(source) => Err(PrivilegeError::Drop { user: name.to_owned(), step: "look up user", source }),
        },
    }
}

/// Gives `data_dir` (recursively) to the user, then drops to it permanently.
pub fn drop_to(user: &User, data_dir: &Path) -> Result<(), PrivilegeError> {
    let fail = |step: &'static str| {
        let name = user.name.clone();
        move |source| PrivilegeError::Drop { user: name, step, source }
    };
    chown_tree(data_dir, user.uid, user.gid).map_err(fail("chown the data dir"))?;
    let name = CString::new(user.name.as_bytes()).map_err(|_| fail("user name")(nix::Error::EINVAL))?;
    let groups = nix::unistd::getgrouplist(&name, user.gid).map_err(fail("read the user's groups"))?;
    nix::unistd::setgroups(&groups).map_err(fail("setgroups"))?;
    nix::unistd::setgid(user.gid).map_err(fail("setgid"))?;
    nix::unistd::setuid(user.uid).map_err(fail("setuid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(fail("no_new_privs"))?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() || Uid::effective().is_root() || Gid::effective().as_raw() == 0 {
        return Err(PrivilegeError::NotPermanent);
    }
    tracing::info!(user = %user.name, uid = user.uid.as_raw(), gid = user.gid.as_raw(), "dropped root privileges");
    Ok(())
}

fn chown_tree(path: &Path, uid: Uid, gid: Gid) -> nix::Result<()> {
    nix::unistd::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() && !path.is_symlink() {
        let entries =
            std::fs::read_dir(path).map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc_eio())))?;
        for entry in entries.flatten() {
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn libc_eio() -> i32 {
    nix::Error::EIO as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprivileged_processes_do_nothing() {
        if Uid::effective().is_root() {
            // As root: no user and no allow_root is refused; allow_root passes.
            assert!(matches!(prepare(None, false), Err(PrivilegeError::RootRefused)));
            assert!(matches!(prepare(None, true), Ok(None)));
            assert!(matches!(prepare(Some("no-such-user-gatewayd"), false), Err(PrivilegeError::UnknownUser(_))));
        } else {
            assert!(matches!(prepare(None, false), Ok(None)));
        }
    }
}
