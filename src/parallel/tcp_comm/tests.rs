//! Tests of [`super::TcpComm`] against a hub on local threads: collectives and messages, aborts,
//! mismatches, an unresolvable master, and ranks that end without a goodbye.

use super::super::hub::{serve, HubEnd};
use super::*;
use std::net::TcpListener;

/// Run `body` on `n` ranks (threads) against one hub; the hub's end and each rank's result.
pub(crate) fn job<T: Send + 'static>(
    n: usize,
    body: impl Fn(TcpComm) -> T + Send + Sync + 'static,
) -> (HubEnd, Vec<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hub = std::thread::spawn(move || serve(listener, n, Duration::from_secs(60)).unwrap());
    let body = Arc::new(body);
    let ranks: Vec<_> = (0..n)
        .map(|r| {
            let (addr, body) = (addr.clone(), body.clone());
            std::thread::spawn(move || body(TcpComm::connect(&addr, r, n, None).unwrap()))
        })
        .collect();
    let out = ranks.into_iter().map(|h| h.join().unwrap()).collect();
    (hub.join().unwrap(), out)
}

/// Every collective of three ranks: sums in rank order (bit for bit the sequential sum),
/// maxima, broadcast, all-gather, barrier; splits into sub-communicators ordered by key whose
/// collectives stay among their members; point-to-point messages in send order, also while
/// another thread of the same rank runs a collective on another communicator.
#[test]
fn three_ranks_run_every_collective_and_message() {
    let (end, out) = job(3, |c| {
        let r = c.rank();
        let mut v = [0.1f32 * (r + 1) as f32, 1e8, -(r as f32)];
        c.all_reduce_sum_f32(&mut v).unwrap();
        let mut m = [r as f64, -(r as f64)];
        c.all_reduce_max_f64(&mut m).unwrap();
        let mut s = [0.5 * r as f64];
        c.all_reduce_sum_f64(&mut s).unwrap();
        let mut b = if r == 2 { b"root".to_vec() } else { Vec::new() };
        c.broadcast_bytes(2, &mut b).unwrap();
        let all = c.all_gather_bytes(&vec![r as u8; r]).unwrap();
        c.barrier().unwrap();
        // ranks 0 and 2 (color 0) ordered by key: 2 first; rank 1 alone
        let sub = c.split(usize::from(r == 1), 10 - r).unwrap();
        let mut x = [r as f32];
        sub.all_reduce_sum_f32(&mut x).unwrap();
        // messages on a second communicator while a thread waits in a barrier on a third
        let p2p = c.split(0, r).unwrap();
        let side = c.split(0, r).unwrap();
        let got = std::thread::scope(|s| {
            let t = s.spawn(move || side.barrier());
            let got = if r == 0 {
                (0..2).map(|_| p2p.recv_bytes(1).unwrap()).collect()
            } else {
                if r == 1 {
                    p2p.send_bytes(0, b"first").unwrap();
                    p2p.send_bytes(0, b"second").unwrap();
                }
                Vec::new()
            };
            t.join().unwrap().unwrap();
            got
        });
        (v, m, s, b, all, (sub.rank(), sub.size(), x[0]), got)
    });
    assert_eq!(end, HubEnd::Done);
    let want_sum = [(0.1f32 + 0.2) + 0.3 * 1.0f32, 3e8, -3.0];
    for (r, (v, m, s, b, all, sub, got)) in out.into_iter().enumerate() {
        assert_eq!(v[0].to_bits(), ((0.1f32 * 1.0 + 0.1 * 2.0) + 0.1 * 3.0).to_bits(), "rank order");
        assert_eq!(v[1..], want_sum[1..]);
        assert_eq!(m, [2.0, 0.0]);
        assert_eq!(s, [1.5]);
        assert_eq!(b, b"root");
        assert_eq!(all, vec![vec![], vec![1u8], vec![2u8, 2]]);
        let want_sub = match r {
            0 => (1, 2, 2.0),
            1 => (0, 1, 1.0),
            _ => (0, 2, 2.0),
        };
        assert_eq!(sub, want_sub, "rank {r}");
        if r == 0 {
            assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
        }
    }
}

/// A rank's abort ends the hub with its reason; mismatched collectives end it naming both.
#[test]
fn an_abort_or_a_mismatch_ends_the_job() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hub = std::thread::spawn(move || serve(listener, 2, Duration::from_secs(60)).unwrap());
    // (a connection returns once every rank has connected: the two join from two threads)
    let at = addr.clone();
    let a = std::thread::spawn(move || TcpComm::connect(&at, 0, 2, None).unwrap());
    let b = TcpComm::connect(&addr, 1, 2, None).unwrap();
    let a = a.join().unwrap();
    a.link.send(wire::COLLECTIVE, 0, (wire::OP_BARRIER, 0), &[]).unwrap();
    b.link.send(wire::COLLECTIVE, 0, (wire::OP_SUM_F32, 0), &[]).unwrap();
    match hub.join().unwrap() {
        HubEnd::Aborted(why) => assert!(why.contains("different collectives"), "{why}"),
        e => panic!("{e:?}"),
    }
    // the connection is gone: a collective fails instead of waiting forever
    assert!(a.barrier().is_err());
    let (end, _) = job(2, |c| {
        if c.rank() == 1 {
            c.link.send(wire::ABORT, 0, (0, 0), b"rank 1: out of disk").unwrap();
        } else {
            let _ = c.barrier();
        }
    });
    assert_eq!(end, HubEnd::Aborted("rank 1: out of disk".into()));
}

/// A rank that aborts while others have not yet connected ends the job at once with its
/// reason (not at the join timeout, as "did not connect"); ranks that never come end it at the
/// join timeout, naming them.
#[test]
fn an_abort_before_every_rank_joined_ends_the_job_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let t0 = std::time::Instant::now();
    let hub = std::thread::spawn(move || serve(listener, 3, Duration::from_secs(60)).unwrap());
    let mut s = TcpStream::connect(&addr).unwrap();
    wire::write_frame(&mut s, wire::HELLO, 0, (1, 3), &[]).unwrap();
    wire::write_frame(&mut s, wire::ABORT, 0, (0, 0), b"rank 1: bad config").unwrap();
    assert_eq!(hub.join().unwrap(), HubEnd::Aborted("rank 1: bad config".into()));
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hub = std::thread::spawn(move || serve(listener, 3, Duration::from_secs(1)).unwrap());
    let mut s = TcpStream::connect(&addr).unwrap();
    wire::write_frame(&mut s, wire::HELLO, 0, (1, 3), &[]).unwrap();
    match hub.join().unwrap() {
        HubEnd::Aborted(why) => assert!(why.contains("rank(s) 0, 2 of 3 did not connect"), "{why}"),
        e => panic!("{e:?}"),
    }
}

/// A hub address whose host does not resolve fails once the resolution bound has passed (a
/// rank's is 30 s), not at the join timeout, saying so; one that resolves is connected to.
#[test]
fn a_master_that_does_not_resolve_fails_early() {
    let t0 = std::time::Instant::now();
    let (join, resolve) = (Duration::from_secs(600), Duration::from_secs(1));
    let e = connect_within("no-such-host.invalid:29500", join, resolve).unwrap_err();
    assert!(e.to_string().contains("does not resolve"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(connect_within(&format!("localhost:{port}"), Duration::from_secs(5), resolve).is_ok());
}

/// A rank whose connection ends without its goodbye (its process died) ends the job at once,
/// though no rank waits for it at the hub (they may wait in NCCL); one that drops its
/// communicators says goodbye, unless a panic unwinds them.
#[test]
fn a_rank_that_ends_without_a_goodbye_ends_the_job() {
    // (rank 0 is a bare connection: a communicator that loses its hub ends the process)
    let hello = |addr: &str, rank: u64| {
        let mut s = TcpStream::connect(addr).unwrap();
        wire::write_frame(&mut s, wire::HELLO, 0, (rank, 2), &[]).unwrap();
        s
    };
    for how in ["killed", "panicked", "goodbye"] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hub = std::thread::spawn(move || serve(listener, 2, Duration::from_secs(60)).unwrap());
        let mut zero = hello(&addr, 0);
        let at = addr.clone();
        let one = std::thread::spawn(move || match how {
            "killed" => {
                let s = hello(&at, 1);
                let welcome = Frame::read_from(&mut BufReader::new(s.try_clone().unwrap())).unwrap();
                assert_eq!(welcome.kind, wire::WELCOME);
            }
            "panicked" => {
                let c = TcpComm::connect(&at, 1, 2, None).unwrap();
                let _ = c.rank();
                panic!("rank 1 fails");
            }
            _ => drop(TcpComm::connect(&at, 1, 2, None).unwrap()),
        });
        let _ = one.join();
        if how == "goodbye" {
            // the hub hears rank 1 leave (a LEFT frame after the welcome) and goes on serving
            let mut r = BufReader::new(zero.try_clone().unwrap());
            assert_eq!(Frame::read_from(&mut r).unwrap().kind, wire::WELCOME);
            assert_eq!(Frame::read_from(&mut r).unwrap().kind, wire::LEFT);
            wire::write_frame(&mut zero, wire::GOODBYE, 0, (0, 0), &[]).unwrap();
            zero.shutdown(std::net::Shutdown::Both).unwrap();
            assert_eq!(hub.join().unwrap(), HubEnd::Done);
            continue;
        }
        // (rank 0 stays connected: a hub that does not end the job waits for it; it leaves
        // after 20 s so that the hub's verdict shows)
        let t0 = std::time::Instant::now();
        while !hub.is_finished() && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        zero.shutdown(std::net::Shutdown::Both).unwrap();
        match hub.join().unwrap() {
            HubEnd::Aborted(why) => {
                assert!(why.contains("world rank 1 exited without saying goodbye"), "{how}: {why}")
            }
            e => panic!("{how}: {e:?}"),
        }
    }
}

/// A rank that exits while another waits for it in a collective, or before another calls
/// one with it, ends the job naming both (instead of a hang); the waiting rank's call fails.
#[test]
fn a_rank_that_exits_without_its_collective_ends_the_job() {
    for waits_first in [true, false] {
        let (end, out) = job(2, move |c| {
            if c.rank() == 1 {
                if !waits_first {
                    return true;
                }
                // rank 0 is in the barrier before rank 1 leaves
                std::thread::sleep(Duration::from_millis(100));
                return true;
            }
            if !waits_first {
                std::thread::sleep(Duration::from_millis(100));
            }
            c.barrier().is_err()
        });
        // (which of the two messages depends on which event the hub sees first)
        let HubEnd::Aborted(why) = end else { panic!("the job must end: {end:?}") };
        let messages = [
            "rank 1 exited while rank 0 waited for it in barrier",
            "rank 0 called barrier with rank 1, which has exited",
        ];
        assert!(messages.contains(&why.as_str()), "{why}");
        assert!(out[0], "rank 0's barrier fails");
    }
}
