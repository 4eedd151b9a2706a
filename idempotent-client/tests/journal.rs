//! The file journal: what it keeps, and what it does with a damaged file.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotent_client::{FileJournal, Intent, Journal};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A fresh directory for one test's journal file.
fn journal_path(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("idempotent-journal-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("intents.journal")
}

fn intent(name: &str, key: &str, age: Duration) -> Intent {
    let created = SystemTime::now() - age;
    Intent {
        name: name.to_owned(),
        key: key.to_owned(),
        method: "POST".to_owned(),
        url: "http://127.0.0.1:9/payments".to_owned(),
        headers: Vec::new(),
        body: b"{}".to_vec(),
        created_at_ms: created.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64,
        done: false,
        answered_at_ms: 0,
    }
}

/// An intent created `age` ago and answered `answered` ago, written as the
/// journal file would hold it.
fn answered(name: &str, key: &str, age: Duration, answered: Duration) -> Intent {
    let at = SystemTime::now() - answered;
    Intent {
        done: true,
        answered_at_ms: at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64,
        ..intent(name, key, age)
    }
}

/// Writes `intents` straight into the journal file's table.
fn write_raw(path: &PathBuf, intents: &[Intent]) {
    let entries: Vec<_> = intents
        .iter()
        .map(|intent| (intent.name.as_str(), serde_json::to_vec(intent).unwrap()))
        .collect();
    write_entries(path, &entries);
}

/// Writes entries, readable or not, straight into the journal file's table.
fn write_entries(path: &PathBuf, entries: &[(&str, Vec<u8>)]) {
    let db = redb::Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let table: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("intents");
        let mut table = tx.open_table(table).unwrap();
        for (name, bytes) in entries {
            table.insert(*name, bytes.as_slice()).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Retention counts from the answer, and never forgets a pending intent: a
/// pending one keeps its key however old it is, and one answered recently
/// keeps it while the server still holds its record, so a re-run can never
/// run as a new request.
#[tokio::test]
async fn retention_counts_from_the_answer_and_never_forgets_a_pending_intent() {
    let path = journal_path("retention");
    write_raw(
        &path,
        &[
            intent("pending", "KEY-PENDING", 3 * DAY),
            answered("answered", "KEY-ANSWERED", 3 * DAY, 2 * DAY),
            answered("recent", "KEY-RECENT", 3 * DAY, Duration::from_secs(60)),
        ],
    );
    // Opened with a day's retention: the intent answered two days ago is
    // forgotten (a new key for the name); the pending one and the one
    // answered a minute ago, though created three days ago, are not.
    let journal = FileJournal::open(&path, DAY).unwrap();
    let recent = journal
        .begin(intent("recent", "NEW-KEY", Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(recent.key, "KEY-RECENT");
    let pending = journal.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, "KEY-PENDING");
    let again = journal
        .begin(intent("pending", "NEW-KEY", Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(again.key, "KEY-PENDING");
    let answered = journal
        .begin(intent("answered", "NEW-KEY", Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(answered.key, "NEW-KEY");
    // Pruning everything answered before tomorrow: only `recent` goes; the
    // two pending intents stay.
    assert_eq!(journal.prune(SystemTime::now() + DAY).await.unwrap(), 1);
    assert_eq!(journal.pending().await.unwrap().len(), 2);
}

/// A damaged journal file is an error, never a fresh journal (which would
/// give every pending intent a new key) and never a panic; an empty one is
/// a new journal.
#[tokio::test]
async fn a_damaged_journal_file_is_an_error_not_a_fresh_journal() {
    let path = journal_path("damaged");
    write_raw(&path, &[intent("order-1", "KEY-1", Duration::ZERO)]);
    let whole = std::fs::read(&path).unwrap();

    std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    let error = FileJournal::open(&path, DAY).unwrap_err();
    assert!(error.to_string().contains("journal"), "{error}");

    std::fs::write(&path, b"not a journal at all, but a text file").unwrap();
    assert!(FileJournal::open(&path, DAY).is_err());

    // The whole file still opens, with its key.
    std::fs::write(&path, &whole).unwrap();
    let journal = FileJournal::open(&path, DAY).unwrap();
    assert_eq!(journal.pending().await.unwrap()[0].key, "KEY-1");
    drop(journal);

    // An empty file (what `mktemp` makes) is a new journal.
    std::fs::write(&path, b"").unwrap();
    let journal = FileJournal::open(&path, DAY).unwrap();
    assert!(journal.pending().await.unwrap().is_empty());
}

/// An entry that cannot be read (another release, damage) is skipped and
/// kept: the other intents are still listed and resumed.
#[tokio::test]
async fn an_unreadable_entry_does_not_hide_the_others() {
    let path = journal_path("unreadable");
    let good = serde_json::to_vec(&intent("order-1", "KEY-1", Duration::ZERO)).unwrap();
    write_entries(
        &path,
        &[
            ("order-1", good),
            ("legacy", b"{\"name\":\"legacy\"}".to_vec()),
        ],
    );
    let journal = FileJournal::open(&path, DAY).unwrap();
    let pending = journal.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, "KEY-1");
    // Reading it as its own intent is an error, not a silent new key.
    assert!(
        journal
            .begin(intent("legacy", "NEW", Duration::ZERO))
            .await
            .is_err()
    );
}
