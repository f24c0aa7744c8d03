//! The consumer side of the kernel's BPF ring buffer (`EVENTS`), with its data pages mapped
//! once.
//!
//! aya's `RingBuf` maps the data area twice in a row, as the kernel allows, so that a record
//! that wraps around the end reads as one slice. Every page of a ring buffer mapping is put in
//! the page tables when it is mapped (the kernel's `remap_vmalloc_range`), so the second
//! mapping adds the whole buffer again to the daemon's RSS (16 MiB with the default
//! `--ring-buffer-mb`) for memory that is already there once. Here the data is mapped once and
//! the rare record that wraps is copied into a buffer of its own.
//!
//! The protocol is the kernel's (kernel/bpf/ringbuf.c): page 0 holds the consumer position
//! (ours to write), page 1 the producer position, the data follows; positions count bytes
//! forever and are taken modulo the size; each record is an 8-byte header (length with the
//! busy and discard bits, page offset) followed by its data, padded to 8 bytes. The memory
//! orderings are those of aya's reader, including the fence that keeps a wakeup from being
//! missed (see [`EventRing::next_record`]).
//!
//! The consumer position is published as records are read, or, for a pinned ring buffer that
//! outlives the daemon, only once their events are committed ([`EventRing::hold_until_released`],
//! [`EventRing::release_through`]; see [`crate::committed`]).

use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use aya::maps::MapData;

use crate::committed::RingPos;

/// Set in a record's header while its producer has not committed it.
const BUSY_BIT: u32 = 1 << 31;
/// Set in a committed record's header that the producer threw away.
const DISCARD_BIT: u32 = 1 << 30;
/// The header before each record's data.
const HEADER_BYTES: u64 = 8;

/// A shared mapping of part of the ring buffer's map, unmapped when dropped.
struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        prot: libc::c_int,
        offset: usize,
    ) -> std::io::Result<Self> {
        let offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
        // SAFETY: a new shared mapping of the map's fd; the kernel checks the length, offset and
        // protection against the map (only the consumer page may be written).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped by `new` with this length; nothing refers to it after the drop.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// The ring buffer of records, read in order. Owns the map's fd (poll it for readability).
pub struct EventRing {
    consumer: Mapping,
    /// The producer position's page followed by the data pages.
    producer: Mapping,
    page: usize,
    /// The data area's size in bytes (a power of two).
    size: u64,
    /// Our read position: the end of the last record read.
    read: u64,
    /// The position last stored to the consumer page: the kernel may reuse the space before
    /// it. Equal to `read` unless records are held until released.
    published: u64,
    /// Publish as records are read (false: only through [`EventRing::release_through`]).
    release_on_read: bool,
    /// The producer position as last read.
    producer_pos: u64,
    /// A position was published since the producer's was last read; see [`EventRing::next_record`].
    needs_fence: bool,
    /// Where a record that wraps around the end of the data area is put together.
    wrapped: Vec<u8>,
    map: MapData,
}

// SAFETY: the mappings are owned by the value and only accessed through `&mut self` (the
// consumer position) or with atomic loads (the producer's pages).
unsafe impl Send for EventRing {}

impl EventRing {
    /// Maps the ring buffer `map` of `size_bytes` data bytes (the map's max_entries).
    pub fn new(map: MapData, size_bytes: u32) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::other("page size"))?;
        let size = usize::try_from(size_bytes).map_err(std::io::Error::other)?;
        if !size.is_power_of_two() || size < page {
            return Err(std::io::Error::other(format!(
                "ring buffer size {size} is not a power of two of at least a page"
            )));
        }
        let fd = map.fd().as_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + size, libc::PROT_READ, page)?;
        let mut ring = EventRing {
            consumer,
            producer,
            page,
            size: u64::from(size_bytes),
            read: 0,
            published: 0,
            release_on_read: true,
            producer_pos: 0,
            needs_fence: false,
            wrapped: Vec::new(),
            map,
        };
        // Start where a previous reader left off.
        ring.read = ring.consumer_pos().load(Ordering::Acquire);
        ring.published = ring.read;
        ring.producer_pos = ring.read;
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the page is mapped for as long as self lives and page-aligned; the kernel
        // reads it with atomic loads.
        unsafe { &*(self.consumer.ptr.as_ptr() as *const AtomicU64) }
    }

    fn load_producer_pos(&self) -> u64 {
        // SAFETY: as above, for the producer page, which the kernel updates atomically.
        let atomic = unsafe { &*(self.producer.ptr.as_ptr() as *const AtomicU64) };
        atomic.load(Ordering::Acquire)
    }

    /// The data area, `size` bytes after the producer page.
    fn data(&self) -> &[u8] {
        // SAFETY: the producer mapping is one page plus `size` bytes, mapped read-only for as
        // long as self lives. The kernel writes records the reader has not reached yet; the
        // bytes of a record are read only after its header says it is committed, and the
        // kernel does not reuse them before the consumer position passes them.
        unsafe {
            std::slice::from_raw_parts(
                self.producer.ptr.as_ptr().cast::<u8>().add(self.page),
                self.producer.len - self.page,
            )
        }
    }

    /// Past the record just read (`advance` bytes with its header and padding).
    fn advance_read(&mut self, advance: u64) {
        self.read = self.read.wrapping_add(advance);
        if self.release_on_read {
            self.publish(self.read);
        }
    }

    fn publish(&mut self, pos: u64) {
        self.published = pos;
        // Release: the record's bytes are read before the kernel may reuse them.
        self.consumer_pos().store(pos, Ordering::Release);
        self.needs_fence = true;
    }

    /// From now on the consumer position is published only by [`EventRing::release_through`]:
    /// the records read stay in the ring buffer (the kernel does not overwrite them) until
    /// released, so that a daemon adopting the pinned ring buffer after a crash reads again
    /// what this one had not committed. The kernel wakes the reader only when a record is
    /// written at the published position: while records are held, poll
    /// ([`EventRing::holds`]).
    pub fn hold_until_released(&mut self) {
        self.release_on_read = false;
    }

    /// Gives the kernel back the space of the records ending at or before `pos` (never beyond
    /// what was read).
    pub fn release_through(&mut self, pos: RingPos) {
        let target = pos.0.min(self.read);
        if target > self.published {
            self.publish(target);
        }
    }

    /// The end of the last record read.
    pub fn read_position(&self) -> RingPos {
        RingPos(self.read)
    }

    /// The consumer position as published.
    pub fn published_position(&self) -> RingPos {
        RingPos(self.published)
    }

    /// Whether records read are still held (not released to the kernel).
    pub fn holds(&self) -> bool {
        self.published < self.read
    }

    /// The data area's size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    /// The kernel's id of the ring buffer map.
    pub fn map_id(&self) -> std::io::Result<u32> {
        self.map
            .info()
            .map(|info| info.id())
            .map_err(std::io::Error::other)
    }

    /// The next committed record, or None when there is none yet (poll the fd again). The
    /// record is read once the item is dropped, and then released (its space given back to
    /// the kernel) unless records are held ([`EventRing::hold_until_released`]).
    pub fn next_record(&mut self) -> Option<RingItem<'_>> {
        loop {
            if self.read == self.producer_pos {
                if self.needs_fence {
                    // The kernel wakes the reader only if the consumer position it reads at
                    // commit time is the record's: order our store of that position before
                    // our load of the producer's, or each could miss the other's and a
                    // record would wait for the next wakeup.
                    fence(Ordering::SeqCst);
                    self.needs_fence = false;
                }
                self.producer_pos = self.load_producer_pos();
                if self.read == self.producer_pos {
                    return None;
                }
            }
            let mask = self.size - 1;
            let offset = usize::try_from(self.read & mask).ok()?;
            let data = self.data();
            // Records are 8-byte aligned and the size is a multiple of 8: the header never wraps.
            let header_ptr = data.get(offset..offset + 4)?.as_ptr().cast::<AtomicU32>();
            // SAFETY: 8-byte aligned (positions advance in multiples of 8, the mapping is page
            // aligned), inside the mapping; the kernel commits with an atomic exchange, paired
            // with this Acquire so the record's bytes are visible once the busy bit is clear.
            let header = unsafe { &*header_ptr }.load(Ordering::Acquire);
            if header & BUSY_BIT != 0 {
                if self.needs_fence {
                    // As above: a producer committing this record must see our position.
                    fence(Ordering::SeqCst);
                    self.needs_fence = false;
                    continue;
                }
                return None;
            }
            let len = u64::from(header & !(BUSY_BIT | DISCARD_BIT));
            let total = (HEADER_BYTES + len).next_multiple_of(8);
            if header & DISCARD_BIT != 0 || len > self.size {
                self.advance_read(total);
                continue;
            }
            let start = offset + HEADER_BYTES as usize;
            let len = len as usize;
            let size = self.size as usize;
            let wrapped = start + len > size;
            if wrapped {
                // The record continues at the start of the data area.
                let first = size.saturating_sub(start);
                let mut buf = std::mem::take(&mut self.wrapped);
                buf.clear();
                let data = self.data();
                buf.extend_from_slice(data.get(start.min(size)..)?);
                buf.extend_from_slice(data.get(..len - first)?);
                self.wrapped = buf;
            }
            return Some(RingItem {
                ring: self,
                start,
                len,
                wrapped,
                total,
            });
        }
    }
}

impl AsFd for EventRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }
}

impl std::os::fd::AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

/// One record, borrowed from the ring buffer until dropped.
pub struct RingItem<'a> {
    ring: &'a mut EventRing,
    start: usize,
    len: usize,
    wrapped: bool,
    total: u64,
}

impl std::ops::Deref for RingItem<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.wrapped {
            &self.ring.wrapped
        } else {
            // In range: checked against the size in `next` (the record does not wrap).
            self.ring
                .data()
                .get(self.start..self.start + self.len)
                .unwrap_or_default()
        }
    }
}

impl Drop for RingItem<'_> {
    fn drop(&mut self) {
        self.ring.advance_read(self.total);
    }
}
