//! rowgate's own queries in a session's upstream stream: a plain
//! synchronous type shared by the two halves. The client half sends a
//! simple Query of its own between two of the client's cycles (to read the
//! session's search path, which the client's statements may have changed in
//! ways only PostgreSQL knows, such as a rollback); the relay consumes every
//! message of that cycle instead of handing it to the client, and the
//! client half gets the first column of the first row.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// What an own query gave.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The first column of the first row (`None`: no row, NULL, or the
    /// query failed).
    pub value: Option<String>,
    /// Whether it failed (an ErrorResponse).
    pub failed: bool,
    /// The transaction status of its ReadyForQuery.
    pub status: u8,
}

struct Own {
    cycle: u64,
    value: Option<String>,
    failed: bool,
    done: Option<oneshot::Sender<Answer>>,
}

/// The own queries under way, by the cycle they take.
#[derive(Default)]
pub struct OwnQueries {
    queue: Mutex<VecDeque<Own>>,
}

/// Message tags the relay hands over.
pub mod tag {
    pub const DATA_ROW: u8 = b'D';
    pub const ERROR: u8 = b'E';
    pub const READY: u8 = b'Z';
}

impl OwnQueries {
    /// Cycle `cycle` is an own query's; its answer comes on the receiver.
    pub fn register(&self, cycle: u64) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(Own {
            cycle,
            value: None,
            failed: false,
            done: Some(tx),
        });
        rx
    }

    /// Whether cycle `cycle` is an own query's.
    pub fn owns(&self, cycle: u64) -> bool {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.front().is_some_and(|o| o.cycle == cycle)
    }

    /// A message of the own cycle `cycle` (tag and body), consumed; true
    /// when it ended the cycle.
    pub fn take(&self, cycle: u64, tag: u8, body: &[u8]) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(own) = q.front_mut().filter(|o| o.cycle == cycle) else {
            return false;
        };
        match tag {
            tag::DATA_ROW if own.value.is_none() && !own.failed => {
                own.value = first_column(body);
            }
            tag::ERROR => {
                own.failed = true;
                own.value = None;
            }
            tag::READY => {
                let mut own = q.pop_front().expect("front checked");
                if let Some(done) = own.done.take() {
                    let _ = done.send(Answer {
                        value: own.value.take(),
                        failed: own.failed,
                        status: body.first().copied().unwrap_or(b'I'),
                    });
                }
                return true;
            }
            _ => {}
        }
        false
    }
}

/// The first column of a DataRow body, as text.
fn first_column(body: &[u8]) -> Option<String> {
    let count = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    if count < 1 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    if len < 0 {
        return None;
    }
    let value = body.get(6..6 + len as usize)?;
    String::from_utf8(value.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend(v.as_bytes());
                }
                None => b.extend((-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn an_own_cycle_gives_its_first_value_and_ends_at_ready() {
        let own = OwnQueries::default();
        let mut rx = own.register(3);
        assert!(!own.owns(2));
        assert!(own.owns(3));
        assert!(!own.take(3, b'T', b"whatever"));
        assert!(!own.take(3, tag::DATA_ROW, &data_row(&[Some("sales, public")])));
        assert!(!own.take(3, tag::DATA_ROW, &data_row(&[Some("ignored")])));
        assert!(!own.take(3, b'C', b"SELECT 1\0"));
        assert!(rx.try_recv().is_err());
        assert!(own.take(3, tag::READY, b"T"));
        assert_eq!(
            rx.try_recv().unwrap(),
            Answer {
                value: Some("sales, public".into()),
                failed: false,
                status: b'T'
            }
        );
        assert!(!own.owns(3));
        assert!(!own.take(3, tag::READY, b"I"), "not own any more");
    }

    #[test]
    fn a_failed_own_cycle_says_so() {
        let own = OwnQueries::default();
        let mut rx = own.register(0);
        own.take(0, tag::ERROR, b"SERROR\0C25P02\0\0");
        own.take(0, tag::READY, b"E");
        assert_eq!(
            rx.try_recv().unwrap(),
            Answer {
                value: None,
                failed: true,
                status: b'E'
            }
        );
    }

    #[test]
    fn null_and_malformed_rows_give_nothing() {
        assert_eq!(first_column(&data_row(&[None])), None);
        assert_eq!(first_column(&data_row(&[])), None);
        assert_eq!(first_column(&[0, 1, 0, 0, 0, 9, b'x']), None);
        assert_eq!(first_column(&[]), None);
    }
}
