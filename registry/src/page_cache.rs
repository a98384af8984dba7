//! Reading blobs from the page cache without wasting work: this module is
//! the crate's only unsafe code, because no safe API we use offers either
//! of its two jobs.
//!
//! - [`Residency`] tells which parts of a file the page cache holds, so that
//!   `sendfile` is only asked for bytes it can copy without waiting for the
//!   disk (it would block an async worker thread while it did).
//!   `mincore(2)` answers per page, but only for a memory mapping: the file
//!   is mapped (never touched, so nothing is read or faulted in) for as long
//!   as its response lasts.
//! - [`read_into`] reads into a buffer's spare capacity, optionally only
//!   what the page cache holds (`preadv2` with `RWF_NOWAIT`), without first
//!   filling the buffer with zeros: that memset cost 3.5% of the server's
//!   CPU in a TLS pull profile, a third as much as the read itself.
//! - [`start_writeback`] asks the kernel to start writing a just-written
//!   range to disk (`sync_file_range`), so that the fsync before a push is
//!   acknowledged overlaps with receiving instead of following it.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;

/// Which pages of part of a file the page cache holds.
///
/// `cachestat(2)` (Linux 6.5+) answers for a whole range in one call that
/// walks the cache's folios. Older kernels get `mincore(2)`, which needs a
/// memory mapping and looks up every page on its own: in a 32-download
/// sendfile profile it took 7% of the server's CPU.
pub struct Residency {
    file: Arc<File>,
    /// Only when `cachestat` is unavailable.
    mapping: Option<Mapping>,
}

impl Residency {
    /// Prepares to answer for `range` of `file`. `range` must not be empty.
    pub fn new(file: Arc<File>, range: Range<u64>) -> io::Result<Residency> {
        let mapping = if cachestat_works(&file) {
            None
        } else {
            Some(Mapping::new(&file, range)?)
        };
        Ok(Residency { file, mapping })
    }

    /// Whether every page of `range` is in the page cache (`range` within
    /// the one given to `new`). Errors count as "no": the caller then reads
    /// normally.
    pub fn resident(&self, range: Range<u64>) -> bool {
        match &self.mapping {
            Some(m) => m.resident(range),
            None => cachestat(&self.file, &range).is_ok_and(|cached| cached >= pages(&range)),
        }
    }
}

/// The number of pages `range` touches.
fn pages(range: &Range<u64>) -> u64 {
    let page = page_size();
    if range.end <= range.start {
        return u64::MAX;
    }
    range.end.div_ceil(page) - range.start / page
}

/// `struct cachestat_range` of the kernel's ABI.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of the kernel's ABI.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// The syscall's number: 451 on every architecture (new syscalls share one
/// table since Linux 5.1); the libc crate does not name it for all of them.
const SYS_CACHESTAT: libc::c_long = 451;

/// How many pages of `range` are in the page cache.
fn cachestat(file: &File, range: &Range<u64>) -> io::Result<u64> {
    let r = CachestatRange {
        off: range.start,
        len: range.end.saturating_sub(range.start),
    };
    let mut out = Cachestat::default();
    // SAFETY: both pointers are to live, properly laid out (repr(C)) values
    // that the kernel reads (`r`) or writes (`out`) during the call only.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &r as *const CachestatRange,
            &mut out as *mut Cachestat,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(out.nr_cache)
}

/// Whether this kernel (and filesystem) answers `cachestat`; asked once.
fn cachestat_works(file: &File) -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| cachestat(file, &(0..1)).is_ok())
}

/// A read-only mapping of part of a file, used only to ask `mincore`.
struct Mapping {
    /// Address of the mapping (a `usize`, so that the type is `Send`).
    addr: usize,
    len: usize,
    /// The file offset the mapping starts at (page-aligned).
    base: u64,
    page: u64,
}

impl Mapping {
    /// Maps `range` of `file` (widened to whole pages). `range` must not be empty.
    fn new(file: &File, range: Range<u64>) -> io::Result<Mapping> {
        let page = page_size();
        let base = range.start - range.start % page;
        let len = usize::try_from(range.end - base).map_err(io::Error::other)?;
        let offset = libc::off_t::try_from(base).map_err(io::Error::other)?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty range"));
        }
        // SAFETY: a fresh shared read-only mapping at an address the kernel
        // picks; it aliases no Rust memory, and no code dereferences it (it
        // is only passed to mincore and munmap).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            addr: addr as usize,
            len,
            base,
            page,
        })
    }

    /// Whether every page of `range` (within the mapped range) is in the
    /// page cache.
    fn resident(&self, range: Range<u64>) -> bool {
        if range.start < self.base || range.end <= range.start {
            return false;
        }
        let first = (range.start - self.base) / self.page * self.page;
        let end = range.end - self.base;
        let (Ok(first), Ok(end)) = (usize::try_from(first), usize::try_from(end)) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        let pages = (end - first).div_ceil(self.page as usize);
        let mut vec = vec![0u8; pages];
        // SAFETY: `addr + first .. addr + end` lies inside our mapping and
        // `first` is page-aligned; `vec` has one byte per page of it.
        let rc = unsafe {
            libc::mincore(
                (self.addr + first) as *mut libc::c_void,
                end - first,
                vec.as_mut_ptr(),
            )
        };
        rc == 0 && vec.iter().all(|v| v & 1 == 1)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; nothing refers to it.
        unsafe {
            libc::munmap(self.addr as *mut libc::c_void, self.len);
        }
    }
}

/// Whether a read may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Only what the page cache holds (for async worker threads).
    CachedOnly,
    /// Everything asked for (for blocking threads).
    Disk,
}

/// Appends up to `len` bytes of `file` from `offset` to `buf`; returns how
/// many. Fewer than `len` at end of file, or, with [`Wait::CachedOnly`],
/// where the page cache stops (also when the kernel cannot tell: then 0).
pub fn read_into(
    file: &File,
    buf: &mut BytesMut,
    offset: u64,
    len: usize,
    wait: Wait,
) -> io::Result<usize> {
    buf.reserve(len);
    let flags = match wait {
        Wait::CachedOnly => libc::RWF_NOWAIT,
        Wait::Disk => 0,
    };
    let mut filled = 0;
    while filled < len {
        let at = libc::off_t::try_from(offset + filled as u64).map_err(io::Error::other)?;
        let spare = &mut buf.spare_capacity_mut()[..len - filled];
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        // SAFETY: `iov` describes `spare`, memory we own exclusively and
        // that stays alive and unmoved for the call; the kernel only writes it.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match (e.kind(), wait) {
                (io::ErrorKind::Interrupted, _) => continue,
                // Not cached, or RWF_NOWAIT unsupported here: the caller reads the rest.
                (_, Wait::CachedOnly) => break,
                _ => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        let n = n as usize;
        // SAFETY: the kernel initialised the first `n` bytes of the spare
        // capacity (n <= spare.len() <= capacity - len).
        unsafe { buf.set_len(buf.len() + n) };
        filled += n;
    }
    Ok(filled)
}

/// Starts writing `len` dirty bytes of `file` from `offset` to disk, without
/// waiting for it. Only a hint: errors are ignored (the later fsync, which
/// is not, reports any that matter).
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (offset.try_into(), len.try_into()) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // open for as long as `file` is borrowed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running system.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn reads_append_exactly_the_file_bytes_and_stop_at_its_end() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        f.write_all(&data).unwrap();
        let mut buf = BytesMut::from(&b"head"[..]);
        assert_eq!(
            read_into(f.as_file(), &mut buf, 10, 1000, Wait::Disk).unwrap(),
            1000
        );
        assert_eq!(&buf[..4], b"head");
        assert_eq!(&buf[4..], &data[10..1010]);
        let mut buf = BytesMut::new();
        assert_eq!(
            read_into(f.as_file(), &mut buf, 299_990, 1000, Wait::CachedOnly).unwrap(),
            10,
            "stops at the end"
        );
        assert_eq!(&buf[..], &data[299_990..]);
        // Dropping clean pages from the cache needs no privilege (dirty ones stay).
        f.as_file().sync_all().unwrap();
        rustix::fs::fadvise(f.as_file(), 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(
            read_into(f.as_file(), &mut buf, 0, 1000, Wait::CachedOnly).unwrap(),
            0,
            "nothing cached"
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn reports_pages_dropped_from_the_cache_as_not_resident() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![7u8; 3 * 65536 + 100]).unwrap();
        f.as_file().sync_all().unwrap();
        let file = Arc::new(f.as_file().try_clone().unwrap());
        let len = file.metadata().unwrap().len();
        // Whichever way this kernel answers, and mincore's way too.
        let residency = Residency::new(file.clone(), 100..len).unwrap();
        let mapping = Mapping::new(&file, 100..len).unwrap();
        let (cached, evicted): (Vec<bool>, Vec<bool>) = {
            let ask = || {
                [
                    residency.resident(100..len),
                    mapping.resident(100..len),
                    residency.resident(4096..8192),
                ]
            };
            // Just written: cached.
            let cached = ask().to_vec();
            // Dropping clean pages from the cache needs no privilege.
            rustix::fs::fadvise(&*file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            (cached, ask().to_vec())
        };
        assert_eq!(cached, [true, true, true]);
        assert_eq!(evicted, [false, false, false]);
        assert!(!mapping.resident(0..10), "before the mapped range");
        assert!(!mapping.resident(100..len + 5000), "past the mapped range");
    }
}
