//! rowgate's own queries in a session's upstream stream: a plain
//! synchronous type, part of a session's pipeline state. The session sends a
//! simple Query of its own between two of the client's cycles (to read the
//! session's search path, which the client's statements may have changed in
//! ways only PostgreSQL knows, such as a rollback); the relay consumes every
//! message of that cycle instead of handing it to the client, and the
//! session gets the first column of the first row.

use std::collections::VecDeque;

use super::tags::backend;

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
}

/// The own queries under way, by the cycle they take.
#[derive(Default)]
pub struct OwnQueries {
    queue: VecDeque<Own>,
}

impl OwnQueries {
    /// Cycle `cycle` is an own query's.
    pub fn register(&mut self, cycle: u64) {
        self.queue.push_back(Own {
            cycle,
            value: None,
            failed: false,
        });
    }

    /// Whether cycle `cycle` is an own query's.
    pub fn owns(&self, cycle: u64) -> bool {
        self.queue.front().is_some_and(|o| o.cycle == cycle)
    }

    /// No own query is under way.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A message of the own cycle `cycle` (tag and body), consumed; its
    /// answer when the message ended the cycle.
    pub fn take(&mut self, cycle: u64, tag: u8, body: &[u8]) -> Option<Answer> {
        let own = self.queue.front_mut().filter(|o| o.cycle == cycle)?;
        match tag {
            backend::DATA_ROW if own.value.is_none() && !own.failed => {
                own.value = first_column(body);
            }
            backend::ERROR_RESPONSE => {
                own.failed = true;
                own.value = None;
            }
            backend::READY_FOR_QUERY => {
                let own = self.queue.pop_front()?;
                return Some(Answer {
                    value: own.value,
                    failed: own.failed,
                    status: body.first().copied().unwrap_or(b'I'),
                });
            }
            _ => {}
        }
        None
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
        let mut own = OwnQueries::default();
        own.register(3);
        assert!(!own.owns(2));
        assert!(own.owns(3));
        assert_eq!(own.take(3, b'T', b"whatever"), None);
        let row = data_row(&[Some("sales, public")]);
        assert_eq!(own.take(3, backend::DATA_ROW, &row), None);
        let row = data_row(&[Some("ignored")]);
        assert_eq!(own.take(3, backend::DATA_ROW, &row), None);
        assert_eq!(own.take(3, b'C', b"SELECT 1\0"), None);
        assert_eq!(
            own.take(3, backend::READY_FOR_QUERY, b"T"),
            Some(Answer {
                value: Some("sales, public".into()),
                failed: false,
                status: b'T'
            })
        );
        assert!(!own.owns(3) && own.is_empty());
        assert_eq!(
            own.take(3, backend::READY_FOR_QUERY, b"I"),
            None,
            "not own any more"
        );
    }

    #[test]
    fn a_failed_own_cycle_says_so() {
        let mut own = OwnQueries::default();
        own.register(0);
        own.take(0, backend::ERROR_RESPONSE, b"SERROR\0C25P02\0\0");
        assert_eq!(
            own.take(0, backend::READY_FOR_QUERY, b"E").unwrap(),
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
