//! The journal: each intent's key, written durably before the first attempt.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::ReadableTable as _;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// One logical request and the key every attempt of it carries.
///
/// `created_at_ms`, `done` and `answered_at_ms` have defaults when read, so
/// an entry written by another release still reads; the request itself
/// (method, URL, headers, body) never defaults: an entry without it is
/// unreadable rather than resumed with, say, an empty body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The caller's name for it (`order-42`).
    pub name: String,
    /// The idempotency key sent with every attempt.
    pub key: String,
    /// The HTTP method.
    pub method: String,
    /// The URL.
    pub url: String,
    /// Headers to send again on a resume (never credentials).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// When it was first recorded, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub created_at_ms: u64,
    /// Whether a final answer was received.
    #[serde(default)]
    pub done: bool,
    /// When the final answer was received, in milliseconds since the Unix
    /// epoch (0 while pending). Retention counts from here: the server keeps
    /// its record for its TTL after the answer, not after the first attempt.
    #[serde(default)]
    pub answered_at_ms: u64,
}

impl Intent {
    /// Records its final answer, now.
    fn mark_answered(&mut self) {
        self.done = true;
        self.answered_at_ms = now_ms();
    }

    /// Whether an answered intent is older than `before` (never a pending one).
    fn forgettable(&self, before: u64) -> bool {
        self.done && self.answered_at_ms.max(self.created_at_ms) < before
    }
}

/// A journal that could not be read or written. The error it came from, if
/// any, is its [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("idempotency journal: {detail}")]
pub struct JournalError {
    detail: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl JournalError {
    /// An error of a [`Journal`] of your own, from what went wrong.
    ///
    /// ```
    /// let error = idempotent_client::JournalError::new("disk full");
    /// assert_eq!(error.to_string(), "idempotency journal: disk full");
    /// ```
    pub fn new(error: impl std::fmt::Display) -> Self {
        Self {
            detail: error.to_string(),
            source: None,
        }
    }

    /// An error of a [`Journal`] of your own that keeps the error it came
    /// from as its source.
    ///
    /// ```
    /// use std::error::Error as _;
    ///
    /// let io = std::io::Error::other("disk full");
    /// let error = idempotent_client::JournalError::from_source(io);
    /// assert_eq!(error.source().unwrap().to_string(), "disk full");
    /// ```
    pub fn from_source(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            detail: error.to_string(),
            source: Some(Box::new(error)),
        }
    }
}

/// Where intents are kept: [`FileJournal`] (durable, the default of the
/// client) or [`MemoryJournal`] (tests).
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Records `intent` unless one of that name exists, and returns the
    /// recorded one: a new intent, or the earlier one with its key.
    async fn begin(&self, intent: Intent) -> Result<Intent, JournalError>;
    /// Marks the intent as answered (it is kept, so its key is reused,
    /// until it is pruned).
    async fn finish(&self, name: &str) -> Result<(), JournalError>;
    /// The intents without a final answer, oldest first.
    async fn pending(&self) -> Result<Vec<Intent>, JournalError>;
    /// Forgets the intents *answered* before `before`; returns how many.
    /// Pending ones are kept however old: forgetting one would give its
    /// retry a new key, and the request could run twice.
    async fn prune(&self, before: SystemTime) -> Result<usize, JournalError>;
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Intents in memory: for tests; nothing survives the process.
#[derive(Debug, Default, Clone)]
pub struct MemoryJournal(Arc<Mutex<HashMap<String, Intent>>>);

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn begin(&self, intent: Intent) -> Result<Intent, JournalError> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(map.entry(intent.name.clone()).or_insert(intent).clone())
    }

    async fn finish(&self, name: &str) -> Result<(), JournalError> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(intent) = map.get_mut(name) {
            intent.mark_answered();
        }
        Ok(())
    }

    async fn pending(&self) -> Result<Vec<Intent>, JournalError> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut pending: Vec<_> = map.values().filter(|i| !i.done).cloned().collect();
        pending.sort_by_key(|i| i.created_at_ms);
        Ok(pending)
    }

    async fn prune(&self, before: SystemTime) -> Result<usize, JournalError> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let len = map.len();
        map.retain(|_, i| !i.forgettable(ms(before)));
        Ok(len - map.len())
    }
}

const INTENTS: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("intents");

/// Intents in a file, through [redb](https://docs.rs/redb): an embedded,
/// pure-Rust, crash-safe key-value store (copy-on-write B-trees, each commit
/// is durable and atomic, so a `kill -9` at any moment leaves either the
/// previous or the new state, never a torn file), with no C library to
/// build. Chosen over SQLite for that last point and for its small API.
///
/// Writes go through one thread that commits everything queued since its
/// last commit in one transaction: many concurrent sends share each
/// `fsync` (group commit).
#[derive(Clone)]
pub struct FileJournal {
    writer: Arc<Writer>,
}

/// The writer thread's handle. When the last [`FileJournal`] clone goes, the
/// queue closes, the thread finishes what is queued, and dropping waits for
/// it, so the file can be opened again at once (the database is locked while
/// open).
struct Writer {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for FileJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileJournal").finish_non_exhaustive()
    }
}

enum Request {
    Begin(Intent, oneshot::Sender<Result<Intent, JournalError>>),
    Finish(String, oneshot::Sender<Result<(), JournalError>>),
    Pending(oneshot::Sender<Result<Vec<Intent>, JournalError>>),
    Prune(u64, oneshot::Sender<Result<usize, JournalError>>),
}

impl FileJournal {
    /// Opens (or creates) the journal at `path` and forgets intents answered
    /// more than `retention` ago (pending ones are kept, see
    /// [`Journal::prune`]).
    ///
    /// An empty file (what `mktemp` makes) becomes a new journal. A file that
    /// is not a whole journal (cut short, or another kind of file) is an
    /// error, never a fresh journal: starting afresh would give every pending
    /// intent a new key. Move it away to start a new journal deliberately.
    pub fn open(path: impl AsRef<Path>, retention: Duration) -> Result<Self, JournalError> {
        let path = path.as_ref();
        // redb panics on some damaged files (a file cut short): a damaged
        // journal is an error for the caller, not a crash. (The panic hook
        // still prints it; under `panic = "abort"` it cannot be caught.)
        let db = std::panic::catch_unwind(|| redb::Database::create(path))
            .map_err(|_| {
                JournalError::new(format!(
                    "{} is not a readable journal (cut short or damaged)",
                    path.display()
                ))
            })?
            .map_err(JournalError::from_source)?;
        // Prune here, before the writer thread owns the database.
        let cutoff = SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(UNIX_EPOCH);
        let tx = db.begin_write().map_err(JournalError::from_source)?;
        {
            let mut table = tx.open_table(INTENTS).map_err(JournalError::from_source)?;
            let (reply, _) = oneshot::channel();
            // The reply closure only forwards the result; nobody waits for it.
            drop(apply(&mut table, Request::Prune(ms(cutoff), reply)));
        }
        tx.commit().map_err(JournalError::from_source)?;
        let (requests, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("idempotent-journal".to_owned())
            .spawn(move || writer(&db, &receiver))
            .map_err(JournalError::from_source)?;
        Ok(Self {
            writer: Arc::new(Writer {
                requests: Some(requests),
                thread: Some(thread),
            }),
        })
    }

    fn send(&self, request: Request) -> Result<(), JournalError> {
        self.writer
            .requests
            .as_ref()
            .and_then(|requests| requests.send(request).ok())
            .ok_or_else(|| JournalError::new("the journal's writer thread has stopped"))
    }
}

async fn answer<T>(
    receiver: oneshot::Receiver<Result<T, JournalError>>,
) -> Result<T, JournalError> {
    receiver
        .await
        .map_err(|_| JournalError::new("the journal's writer thread has stopped"))?
}

#[async_trait]
impl Journal for FileJournal {
    async fn begin(&self, intent: Intent) -> Result<Intent, JournalError> {
        let (reply, receiver) = oneshot::channel();
        self.send(Request::Begin(intent, reply))?;
        answer(receiver).await
    }

    async fn finish(&self, name: &str) -> Result<(), JournalError> {
        let (reply, receiver) = oneshot::channel();
        self.send(Request::Finish(name.to_owned(), reply))?;
        answer(receiver).await
    }

    async fn pending(&self) -> Result<Vec<Intent>, JournalError> {
        let (reply, receiver) = oneshot::channel();
        self.send(Request::Pending(reply))?;
        answer(receiver).await
    }

    async fn prune(&self, before: SystemTime) -> Result<usize, JournalError> {
        let (reply, receiver) = oneshot::channel();
        self.send(Request::Prune(ms(before), reply))?;
        answer(receiver).await
    }
}

/// The writer thread: takes every queued request, applies them in one
/// write transaction, commits (durably), then answers them all.
fn writer(db: &redb::Database, receiver: &mpsc::Receiver<Request>) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        batch.extend(receiver.try_iter());
        let mut replies = Vec::with_capacity(batch.len());
        let committed = (|| -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(INTENTS)?;
                for request in batch {
                    replies.push(apply(&mut table, request));
                }
            }
            tx.commit()?;
            Ok(())
        })();
        for reply in replies {
            reply(committed.as_ref().err());
        }
    }
}

type Reply = Box<dyn FnOnce(Option<&redb::Error>) + Send>;

/// Applies one request inside the batch's transaction; the returned reply
/// is sent once the commit's outcome is known.
fn apply(table: &mut redb::Table<'_, &str, &[u8]>, request: Request) -> Reply {
    fn read(
        table: &redb::Table<'_, &str, &[u8]>,
        name: &str,
    ) -> Result<Option<Intent>, JournalError> {
        match table.get(name).map_err(JournalError::from_source)? {
            Some(bytes) => serde_json::from_slice(bytes.value())
                .map(Some)
                .map_err(|e| JournalError::new(format!("corrupt entry `{name}`: {e}"))),
            None => Ok(None),
        }
    }
    fn write(
        table: &mut redb::Table<'_, &str, &[u8]>,
        intent: &Intent,
    ) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(intent).map_err(JournalError::from_source)?;
        table
            .insert(intent.name.as_str(), bytes.as_slice())
            .map_err(JournalError::from_source)?;
        Ok(())
    }
    fn reply<T: Send + 'static>(
        sender: oneshot::Sender<Result<T, JournalError>>,
        result: Result<T, JournalError>,
    ) -> Reply {
        Box::new(move |failed| {
            let _ = sender.send(match failed {
                Some(error) => Err(JournalError::new(error)),
                None => result,
            });
        })
    }
    match request {
        Request::Begin(intent, sender) => {
            let result = read(table, &intent.name).and_then(|existing| match existing {
                Some(existing) => Ok(existing),
                None => write(table, &intent).map(|()| intent),
            });
            reply(sender, result)
        }
        Request::Finish(name, sender) => {
            let result = read(table, &name).and_then(|existing| match existing {
                Some(mut intent) if !intent.done => {
                    intent.mark_answered();
                    write(table, &intent)
                }
                _ => Ok(()),
            });
            reply(sender, result)
        }
        Request::Pending(sender) => {
            let result = all(table).map(|all| {
                let mut pending: Vec<_> = all.into_iter().filter(|i| !i.done).collect();
                pending.sort_by_key(|i| i.created_at_ms);
                pending
            });
            reply(sender, result)
        }
        Request::Prune(before, sender) => {
            let result = all(table).and_then(|all| {
                let old: Vec<_> = all.into_iter().filter(|i| i.forgettable(before)).collect();
                for intent in &old {
                    table
                        .remove(intent.name.as_str())
                        .map_err(JournalError::from_source)?;
                }
                Ok(old.len())
            });
            reply(sender, result)
        }
    }
}

/// Every entry that reads. One that does not (written by something else,
/// damaged) is logged and left where it is, for a person to look at: it must
/// not stop the others from being resumed.
fn all(table: &redb::Table<'_, &str, &[u8]>) -> Result<Vec<Intent>, JournalError> {
    let mut intents = Vec::new();
    for entry in table.iter().map_err(JournalError::from_source)? {
        let (name, bytes) = entry.map_err(JournalError::from_source)?;
        match serde_json::from_slice(bytes.value()) {
            Ok(intent) => intents.push(intent),
            Err(error) => tracing::error!(
                entry = name.value(),
                %error,
                "an idempotency journal entry cannot be read; it is skipped and kept"
            ),
        }
    }
    Ok(intents)
}
