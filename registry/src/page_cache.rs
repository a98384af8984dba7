//! Which parts of a file the page cache holds, so that `sendfile` is only
//! asked for bytes it can copy without waiting for the disk (it would block
//! an async worker thread while it did).
//!
//! `mincore(2)` answers per page, but only for a memory mapping: the file
//! is mapped (never touched, so nothing is read or faulted in) for as long
//! as its response lasts. This is the crate's only unsafe code; no safe
//! wrapper of mmap + mincore exists in a crate we use.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd as _;

/// A read-only mapping of part of a file, used only to ask `mincore`.
pub struct Residency {
    /// Address of the mapping (a `usize`, so that the type is `Send`).
    addr: usize,
    len: usize,
    /// The file offset the mapping starts at (page-aligned).
    base: u64,
    page: u64,
}

impl Residency {
    /// Maps `range` of `file` (widened to whole pages). `range` must not be empty.
    pub fn new(file: &File, range: Range<u64>) -> io::Result<Residency> {
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
        Ok(Residency {
            addr: addr as usize,
            len,
            base,
            page,
        })
    }

    /// Whether every page of `range` (within the mapped range) is in the
    /// page cache. Errors count as "no": the caller then reads normally.
    pub fn resident(&self, range: Range<u64>) -> bool {
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

impl Drop for Residency {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; nothing refers to it.
        unsafe {
            libc::munmap(self.addr as *mut libc::c_void, self.len);
        }
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
    fn reports_pages_dropped_from_the_cache_as_not_resident() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![7u8; 3 * 65536 + 100]).unwrap();
        f.as_file().sync_all().unwrap();
        let file = f.as_file();
        let len = file.metadata().unwrap().len();
        let map = Residency::new(file, 100..len).unwrap();
        // Just written: cached.
        assert!(map.resident(100..len));
        // Dropping clean pages from the cache needs no privilege.
        rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        assert!(!map.resident(100..len));
        assert!(!map.resident(0..10), "before the mapped range");
        assert!(!map.resident(100..len + 1), "past the mapped range");
    }
}
