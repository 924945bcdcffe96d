//! `powerfs`: an in-memory FUSE filesystem that forgets what was not synced when the power is "cut".
//!
//! The crash tool mounts it on `<data_dir>/store`, so sled's files live in it. Every file keeps two contents: the live
//! one (what reads return) and the durable one (what survives a power cut). `fsync`/`fdatasync` of a file makes its live
//! content durable. Nothing else does: in particular `sync_file_range(2)`, which never reaches a FUSE filesystem (and is
//! documented as giving no durability guarantee on any filesystem, since it writes neither metadata nor the disk cache).
//!
//! Directory entries (create, mkdir, rename, unlink) follow one of two models ([`Namespace`]):
//! - `Journal` (ext4 with its journal, the Debian default): namespace changes become durable at the next `fsync` of any
//!   file or directory, because ext4's fsync commits the whole running journal transaction.
//! - `Strict` (POSIX as written): an entry becomes durable only when its directory is fsynced.
//!
//! [`Disk::power_cut`] replaces every live state by its durable one and drops what became unreachable. The crash tool
//! unmounts the filesystem first (the daemon is dead by then) and mounts it again afterwards, so the kernel holds no
//! cached page or entry from before the cut; files are also opened with `FOPEN_DIRECT_IO` and attributes are never
//! cached, so every read and write reaches this code.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

/// How directory entries become durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Namespace {
    /// ext4-like: any fsync commits every pending create/rename/unlink.
    Journal,
    /// POSIX-strict: only an fsync of the directory commits its entries.
    Strict,
}

enum Kind {
    File { live: Vec<u8>, durable: Vec<u8> },
    Dir { live: BTreeMap<OsString, u64>, durable: BTreeMap<OsString, u64> },
}

struct Node {
    kind: Kind,
    perm: u16,
}

/// What a power cut dropped (for the tool's report).
#[derive(Clone, Copy, Debug, Default)]
pub struct CutReport {
    /// Bytes of file content that differed from the durable content and were lost.
    pub files_reverted: usize,
    /// Directories whose entries were rolled back.
    pub dirs_reverted: usize,
}

/// The filesystem's state, shared by the mounted session and the tool.
pub struct Disk {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    namespace: Namespace,
    /// fsync + fdatasync calls on files, fsyncs of directories (for the tool's report).
    pub fsyncs: u64,
    pub dir_fsyncs: u64,
}

const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;

impl Disk {
    pub fn new(namespace: Namespace) -> Arc<Mutex<Disk>> {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node { kind: Kind::Dir { live: BTreeMap::new(), durable: BTreeMap::new() }, perm: 0o755 });
        Arc::new(Mutex::new(Disk { nodes, next_ino: ROOT + 1, namespace, fsyncs: 0, dir_fsyncs: 0 }))
    }

    /// Forgets everything that was not made durable, as a power cut would.
    pub fn power_cut(&mut self) -> CutReport {
        let mut report = CutReport::default();
        for node in self.nodes.values_mut() {
            match &mut node.kind {
                Kind::File { live, durable } => {
                    if live != durable {
                        report.files_reverted += 1;
                        live.clone_from(durable);
                    }
                }
                Kind::Dir { live, durable } => {
                    if live != durable {
                        report.dirs_reverted += 1;
                        live.clone_from(durable);
                    }
                }
            }
        }
        // Keep only what the durable tree reaches.
        let mut reachable = std::collections::HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if !reachable.insert(ino) {
                continue;
            }
            if let Some(Node { kind: Kind::Dir { durable, .. }, .. }) = self.nodes.get(&ino) {
                stack.extend(durable.values().copied());
            }
        }
        self.nodes.retain(|ino, _| reachable.contains(ino));
        report
    }

    /// Total bytes of live file content (for the report).
    pub fn live_bytes(&self) -> usize {
        self.nodes.values().map(|n| if let Kind::File { live, .. } = &n.kind { live.len() } else { 0 }).sum()
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::File { live, .. } => (FileType::RegularFile, live.len() as u64, 1),
            Kind::Dir { .. } => (FileType::Directory, 0, 2),
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: node.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn dir(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::Dir { live, .. }) => Ok(live),
            Some(Kind::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file(&mut self, ino: u64) -> Result<&mut Vec<u8>, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File { live, .. }) => Ok(live),
            Some(Kind::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn add(&mut self, parent: u64, name: &OsStr, kind: Kind, perm: u16) -> Result<u64, Errno> {
        if self.dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node { kind, perm });
        self.dir(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Journal model: every directory's entries become durable.
    fn commit_namespace(&mut self) {
        for node in self.nodes.values_mut() {
            if let Kind::Dir { live, durable } = &mut node.kind {
                durable.clone_from(live);
            }
        }
    }

    fn fsync(&mut self, ino: u64) -> Result<(), Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File { live, durable }) => {
                durable.clone_from(live);
                self.fsyncs += 1;
            }
            Some(Kind::Dir { live, durable }) => {
                durable.clone_from(live);
                self.dir_fsyncs += 1;
            }
            None => return Err(Errno::ENOENT),
        }
        if self.namespace == Namespace::Journal {
            self.commit_namespace();
        }
        Ok(())
    }
}

/// The FUSE face of a [`Disk`].
pub struct PowerFs {
    disk: Arc<Mutex<Disk>>,
}

impl PowerFs {
    fn disk(&self) -> MutexGuard<'_, Disk> {
        // A poisoned lock means a panic in this module; the state is still the best there is.
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, reply: ReplyEntry, r: Result<u64, Errno>) {
        let d = self.disk();
        match r.and_then(|ino| d.attr(ino).ok_or(Errno::ENOENT)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

/// Mounts `disk` on `mountpoint` (an existing, empty directory) in a background thread.
pub fn mount(disk: Arc<Mutex<Disk>>, mountpoint: &Path) -> std::io::Result<fuser::BackgroundSession> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("powerfs".into()), fuser::MountOption::RW];
    fuser::spawn_mount(PowerFs { disk }, mountpoint, &config)
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.disk().lookup(parent.0, name);
        self.entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.disk().attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut d = self.disk();
        if let Some(size) = size {
            match d.file(ino.0) {
                Ok(live) => live.resize(usize::try_from(size).unwrap_or(usize::MAX), 0),
                Err(e) => return reply.error(e),
            }
        }
        if let Some(mode) = mode {
            if let Some(n) = d.nodes.get_mut(&ino.0) {
                n.perm = (mode & 0o7777) as u16;
            }
        }
        match d.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc_s_ifmt() != libc_s_ifreg() {
            return reply.error(Errno::EPERM);
        }
        let r = self.disk().add(
            parent.0,
            name,
            Kind::File { live: Vec::new(), durable: Vec::new() },
            (mode & 0o7777) as u16,
        );
        self.entry(reply, r);
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let r = self.disk().add(
            parent.0,
            name,
            Kind::Dir { live: BTreeMap::new(), durable: BTreeMap::new() },
            (mode & 0o7777) as u16,
        );
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut d = self.disk();
        match d.lookup(parent.0, name) {
            Ok(ino) if matches!(d.nodes.get(&ino).map(|n| &n.kind), Some(Kind::Dir { .. })) => {
                reply.error(Errno::EISDIR)
            }
            Ok(_) => match d.dir(parent.0) {
                Ok(dir) => {
                    dir.remove(name);
                    reply.ok()
                }
                Err(e) => reply.error(e),
            },
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut d = self.disk();
        let ino = match d.lookup(parent.0, name) {
            Ok(ino) => ino,
            Err(e) => return reply.error(e),
        };
        match d.nodes.get(&ino).map(|n| &n.kind) {
            Some(Kind::Dir { live, .. }) if live.is_empty() => {}
            Some(Kind::Dir { .. }) => return reply.error(Errno::ENOTEMPTY),
            _ => return reply.error(Errno::ENOTDIR),
        }
        match d.dir(parent.0) {
            Ok(dir) => {
                dir.remove(name);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let mut d = self.disk();
        let ino = match d.lookup(parent.0, name) {
            Ok(ino) => ino,
            Err(e) => return reply.error(e),
        };
        match d.dir(newparent.0) {
            Ok(dir) if flags.contains(RenameFlags::RENAME_NOREPLACE) && dir.contains_key(newname) => {
                return reply.error(Errno::EEXIST)
            }
            Ok(dir) => {
                dir.insert(newname.to_owned(), ino);
            }
            Err(e) => return reply.error(e),
        }
        if parent != newparent || name != newname {
            if let Ok(dir) = d.dir(parent.0) {
                dir.remove(name);
            }
        }
        reply.ok()
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.disk().nodes.get(&ino.0) {
            Some(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut d = self.disk();
        let r = d.add(parent.0, name, Kind::File { live: Vec::new(), durable: Vec::new() }, (mode & 0o7777) as u16);
        match r.and_then(|ino| d.attr(ino).ok_or(Errno::ENOENT)) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let mut d = self.disk();
        match d.file(ino.0) {
            Ok(live) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(live.len());
                let end = start.saturating_add(size as usize).min(live.len());
                reply.data(&live[start..end])
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut d = self.disk();
        match d.file(ino.0) {
            Ok(live) => {
                let Ok(start) = usize::try_from(offset) else { return reply.error(Errno::EFBIG) };
                let end = start.saturating_add(data.len());
                if live.len() < end {
                    live.resize(end, 0);
                }
                live[start..end].copy_from_slice(data);
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        // close(2): no durability (a close is not an fsync).
        reply.ok()
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.disk().fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut d = self.disk();
        let entries: Vec<(OsString, u64)> = match d.dir(ino.0) {
            Ok(dir) => dir.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            Err(e) => return reply.error(e),
        };
        let mut all =
            vec![(OsString::from("."), ino.0, FileType::Directory), (OsString::from(".."), ROOT, FileType::Directory)];
        for (name, child) in entries {
            let kind = match d.nodes.get(&child).map(|n| &n.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((name, child, kind));
        }
        for (i, (name, child, kind)) in all.into_iter().enumerate().skip(usize::try_from(offset).unwrap_or(usize::MAX))
        {
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok()
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.disk().fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let used = (self.disk().live_bytes() / 4096) as u64;
        let blocks = 4 * 1024 * 1024; // 16 GiB of 4 KiB blocks
        reply.statfs(
            blocks,
            blocks.saturating_sub(used),
            blocks.saturating_sub(used),
            1 << 20,
            1 << 20,
            4096,
            255,
            4096,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok()
    }
}

const fn libc_s_ifmt() -> u32 {
    0o170000
}

const fn libc_s_ifreg() -> u32 {
    0o100000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(d: &mut Disk, name: &str) -> u64 {
        d.add(ROOT, OsStr::new(name), Kind::File { live: Vec::new(), durable: Vec::new() }, 0o644).unwrap()
    }

    #[test]
    fn unsynced_writes_and_entries_are_lost_synced_ones_kept() {
        let disk = Disk::new(Namespace::Journal);
        let mut d = disk.lock().unwrap();
        let a = file(&mut d, "a");
        d.file(a).unwrap().extend_from_slice(b"synced");
        d.fsync(a).unwrap();
        d.file(a).unwrap().extend_from_slice(b" lost");
        let b = file(&mut d, "b"); // created after the last fsync: its entry is not durable
        d.file(b).unwrap().extend_from_slice(b"never synced");
        let report = d.power_cut();
        assert_eq!(report.files_reverted, 2);
        assert_eq!(d.file(a).unwrap().as_slice(), b"synced");
        assert_eq!(d.lookup(ROOT, OsStr::new("b")), Err(Errno::ENOENT));
    }

    #[test]
    fn strict_namespace_needs_a_directory_fsync() {
        let disk = Disk::new(Namespace::Strict);
        let mut d = disk.lock().unwrap();
        let a = file(&mut d, "a");
        d.file(a).unwrap().extend_from_slice(b"data");
        d.fsync(a).unwrap(); // the file's data, not its name
        d.power_cut();
        assert_eq!(d.lookup(ROOT, OsStr::new("a")), Err(Errno::ENOENT));
        let a = file(&mut d, "a");
        d.file(a).unwrap().extend_from_slice(b"data");
        d.fsync(a).unwrap();
        d.fsync(ROOT).unwrap();
        d.power_cut();
        let a = d.lookup(ROOT, OsStr::new("a")).unwrap();
        assert_eq!(d.file(a).unwrap().as_slice(), b"data");
    }
}
