//! splice(2) for pure relays. Once the core says a direction is a pure
//! relay (`Proxy::splice_ok`), a runtime may move its bytes socket → pipe →
//! socket inside the kernel instead of reading them into the core's buffer
//! and writing them out again, and reports what reached the other socket
//! as `Event::Spliced`. The order this must keep is [`crate::Directions`]'s.
//!
//! A direction holds a pipe only while bytes are in it, as it holds a
//! buffer of the core's: pipes come from a pool ([`Pipes`]) and go back
//! when empty. A pipe is made as the core says (`Proxy::splice_pipe`: at
//! least 256 KiB of pipe, for page slots; F_SETPIPE_SZ rounds up to a
//! power of two pages, and the system's `fs.pipe-max-size` and
//! `fs.pipe-user-pages-soft` may hold it to less) and holds at most
//! `limits.buffer` bytes at once: the bound on what a spliced direction
//! holds, in the kernel, as for the core's buffer. A pipe that holds that
//! much is full, and a full pipe is what stops reading from its source.
//!
//! Linux only; elsewhere [`Pipes::take`] says "not supported" and the
//! runtimes read and write as before.

use std::io;
use std::os::fd::BorrowedFd;

use crate::table::PipeSize;
#[cfg(target_os = "linux")]
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Empty pipes kept for reuse, at most.
const SPARE: usize = 64;

/// One direction's pipe and how much it holds.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub struct Pipe {
    #[cfg(target_os = "linux")]
    read: OwnedFd,
    #[cfg(target_os = "linux")]
    write: OwnedFd,
    /// Bytes spliced in and not yet out.
    len: usize,
    /// What it may hold: the pipe's capacity, at most the core's limit
    /// for the direction that took it.
    cap: usize,
    /// The pipe's capacity (F_GETPIPE_SZ).
    capacity: usize,
    /// What the core asked for.
    size: PipeSize,
    /// A splice in would have blocked while the pipe held bytes: its page
    /// slots may be used up before its bytes are (a socket's data is
    /// spliced by reference, a page slot per fragment). Wait for room.
    full: bool,
}

/// What splicing from a socket into a pipe did.
#[derive(Debug)]
pub enum Fill {
    /// Bytes went into the pipe.
    Moved,
    /// The socket reached end of stream.
    Eof,
    /// The socket has nothing to read (the pipe was empty, so it is not
    /// the pipe that blocked).
    Empty,
    /// Blocked with bytes in the pipe: the pipe is full, or the socket is
    /// empty; which one shows once the pipe has drained.
    PipeFull,
    /// splice(2) does not work on this socket: read and write instead.
    Unsupported,
}

impl Pipe {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes may be spliced in.
    pub fn has_room(&self) -> bool {
        !self.full && self.len < self.cap
    }

    /// Splices what `src` has, up to the pipe's room, into the pipe.
    #[cfg(target_os = "linux")]
    pub fn fill(&mut self, src: BorrowedFd<'_>) -> io::Result<Fill> {
        let room = self.cap.saturating_sub(self.len);
        if room == 0 {
            self.full = true;
            return Ok(Fill::PipeFull);
        }
        match sys::splice(src.as_raw_fd(), self.write.as_raw_fd(), room) {
            Ok(0) => Ok(Fill::Eof),
            Ok(n) => {
                self.len += n;
                Ok(Fill::Moved)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.len > 0 => {
                self.full = true;
                Ok(Fill::PipeFull)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Fill::Empty),
            Err(e) if sys::unsupported(&e) => Ok(Fill::Unsupported),
            Err(e) => Err(e),
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn fill(&mut self, _src: BorrowedFd<'_>) -> io::Result<Fill> {
        Ok(Fill::Unsupported)
    }

    /// Splices what the pipe holds to `dst`, as much as it takes. `Ok(None)`:
    /// `dst` takes nothing now. A count short of what the pipe held means
    /// `dst`'s buffer is full, as for a short write (the kernel then wakes
    /// the writer when there is room again).
    #[cfg(target_os = "linux")]
    pub fn drain(&mut self, dst: BorrowedFd<'_>) -> io::Result<Option<usize>> {
        if self.len == 0 {
            return Ok(Some(0));
        }
        match sys::splice(self.read.as_raw_fd(), dst.as_raw_fd(), self.len) {
            Ok(n) => {
                // More than it held cannot come out; the count stays exact,
                // so a pipe given back to the pool is truly empty.
                let n = n.min(self.len);
                self.len -= n;
                if n > 0 {
                    self.full = false;
                }
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn drain(&mut self, _dst: BorrowedFd<'_>) -> io::Result<Option<usize>> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Bytes in the pipe now.
    pub fn len(&self) -> usize {
        self.len
    }
}

/// Empty pipes of the current size, for directions that start splicing.
#[derive(Default)]
pub struct Pipes {
    spare: Vec<Pipe>,
    size: PipeSize,
}

impl Pipes {
    pub fn new() -> Pipes {
        Pipes::default()
    }

    /// An empty pipe as the core asks, holding at most `size.limit` (a
    /// reload may change the pipes' size; the spares of the old size are
    /// closed then).
    pub fn take(&mut self, size: PipeSize) -> io::Result<Pipe> {
        if size.size != self.size.size {
            self.spare.clear();
            self.size = size;
        }
        match self.spare.pop() {
            Some(mut p) => {
                // Spares are all of one size; what one may hold is the
                // taker's.
                p.size = size;
                p.cap = p.capacity.min(size.limit.max(1));
                Ok(p)
            }
            None => new_pipe(size),
        }
    }

    /// Takes back a pipe a direction no longer needs; one that still holds
    /// bytes (of a connection that ended) is closed with them.
    pub fn give(&mut self, pipe: Pipe) {
        if pipe.len == 0
            && !pipe.full
            && self.spare.len() < SPARE
            && pipe.size.size == self.size.size
        {
            self.spare.push(pipe);
        }
    }
}

#[cfg(target_os = "linux")]
fn new_pipe(size: PipeSize) -> io::Result<Pipe> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let size_arg = libc::c_int::try_from(size.size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl on a descriptor this function owns.
    let mut cap = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size_arg) };
    if cap < 0 {
        // Over fs.pipe-max-size, or the user's pipe pages are spent: the
        // size it has will do.
        // SAFETY: as above.
        cap = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
    }
    if cap <= 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Pipe {
        read,
        write,
        len: 0,
        cap: (cap as usize).min(size.limit.max(1)),
        capacity: cap as usize,
        size,
        full: false,
    })
}

#[cfg(not(target_os = "linux"))]
fn new_pipe(_size: PipeSize) -> io::Result<Pipe> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "splice(2) is not supported on this system",
    ))
}

#[cfg(target_os = "linux")]
mod sys {
    use std::io;
    use std::os::fd::RawFd;

    /// One splice(2), non-blocking on the pipe (the sockets are
    /// non-blocking themselves), retried when a signal interrupts it.
    pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        loop {
            // SAFETY: no offsets (both ends are a pipe or a socket); the
            // descriptors stay open for the call.
            let n = unsafe {
                libc::splice(
                    from,
                    std::ptr::null_mut(),
                    to,
                    std::ptr::null_mut(),
                    len,
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The kernel cannot splice these descriptors.
    pub fn unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
        )
    }
}

#[cfg(all(test, target_os = "linux"))]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsFd;

    /// Two ends of a loopback TCP connection, both non-blocking.
    pub(crate) fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        (a, b)
    }

    fn wait_fill(p: &mut Pipe, s: &TcpStream) -> Fill {
        for _ in 0..1000 {
            match p.fill(s.as_fd()).expect("fill") {
                Fill::Empty => std::thread::sleep(std::time::Duration::from_millis(1)),
                f => return f,
            }
        }
        Fill::Empty
    }

    fn ps(size: usize) -> PipeSize {
        PipeSize { size, limit: size }
    }

    #[test]
    fn bytes_go_through_a_pipe_and_end_of_stream_shows() {
        let mut pipes = Pipes::new();
        let (mut a, b) = pair();
        let (c, mut d) = pair();
        let mut p = pipes.take(ps(64 * 1024)).expect("a pipe");
        assert!(p.is_empty() && p.has_room());
        assert!(matches!(p.fill(b.as_fd()).expect("fill"), Fill::Empty));
        a.write_all(b"hello").expect("write");
        assert!(matches!(wait_fill(&mut p, &b), Fill::Moved));
        assert_eq!(p.len(), 5);
        assert_eq!(p.drain(c.as_fd()).expect("drain"), Some(5));
        assert!(p.is_empty());
        let mut got = [0u8; 5];
        d.set_nonblocking(false).expect("blocking");
        d.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello");
        a.shutdown(Shutdown::Write).expect("shutdown");
        assert!(matches!(wait_fill(&mut p, &b), Fill::Eof));
        pipes.give(p);
        assert_eq!(pipes.spare.len(), 1, "an empty pipe is kept");
        let p = pipes.take(ps(128 * 1024)).expect("a pipe");
        assert!(pipes.spare.is_empty(), "a new size drops the spares");
        assert!(p.cap >= 128 * 1024 || p.cap >= 4096, "capacity {}", p.cap);
    }

    #[test]
    fn a_spare_holds_what_its_taker_may() {
        let mut pipes = Pipes::new();
        let small = PipeSize {
            size: 256 * 1024,
            limit: 64 * 1024,
        };
        let grown = PipeSize {
            size: 256 * 1024,
            limit: 256 * 1024,
        };
        let p = pipes.take(small).expect("a pipe");
        assert!(p.cap <= 64 * 1024, "capacity {}", p.cap);
        pipes.give(p);
        let p = pipes.take(grown).expect("a pipe");
        assert!(pipes.spare.is_empty(), "the spare was taken, not dropped");
        assert_eq!(p.cap, p.capacity.min(256 * 1024));
        pipes.give(p);
        let p = pipes.take(small).expect("a pipe");
        assert!(
            p.cap <= 64 * 1024,
            "a spare of a grown direction: {}",
            p.cap
        );
    }

    #[test]
    fn a_full_pipe_stops_filling() {
        let mut pipes = Pipes::new();
        let (mut a, b) = pair();
        let mut p = pipes.take(ps(4096)).expect("a pipe");
        let data = vec![7u8; 64 * 1024];
        let _ = a.write(&data);
        loop {
            match wait_fill(&mut p, &b) {
                Fill::Moved => {}
                Fill::PipeFull => break,
                other => panic!("{other:?} after {} bytes", p.len()),
            }
        }
        let moved = p.len();
        assert!(!p.has_room());
        assert!(
            moved <= p.cap && moved > 0,
            "{moved} bytes in a pipe of {}",
            p.cap
        );
        // A pipe that holds bytes is not kept for another connection.
        pipes.give(p);
        assert!(pipes.spare.is_empty());
    }
}
