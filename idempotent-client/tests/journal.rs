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
    }
}

/// Retention forgets answered intents only: a pending one keeps its key
/// however old it is, so its retry can never run as a new request.
#[tokio::test]
async fn retention_never_forgets_a_pending_intent() {
    let path = journal_path("retention");
    {
        let journal = FileJournal::open(&path, DAY).unwrap();
        journal
            .begin(intent("pending", "KEY-PENDING", 2 * DAY))
            .await
            .unwrap();
        journal
            .begin(intent("answered", "KEY-ANSWERED", 2 * DAY))
            .await
            .unwrap();
        journal.finish("answered").await.unwrap();
    }
    // Reopened after the retention: the answered intent is forgotten (a new
    // key for the name), the pending one is not.
    let journal = FileJournal::open(&path, DAY).unwrap();
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
    assert_eq!(
        journal.prune(SystemTime::now() + DAY).await.unwrap(),
        0,
        "prune keeps pending intents too"
    );
}

/// A damaged journal file is an error, never a fresh journal (which would
/// give every pending intent a new key) and never a panic.
#[tokio::test]
async fn a_damaged_journal_file_is_an_error_not_a_fresh_journal() {
    let path = journal_path("damaged");
    {
        let journal = FileJournal::open(&path, DAY).unwrap();
        journal
            .begin(intent("order-1", "KEY-1", Duration::ZERO))
            .await
            .unwrap();
    }
    let whole = std::fs::read(&path).unwrap();

    std::fs::write(&path, b"").unwrap();
    let error = FileJournal::open(&path, DAY).unwrap_err();
    assert!(error.to_string().contains("empty"), "{error}");

    std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    let error = FileJournal::open(&path, DAY).unwrap_err();
    assert!(error.to_string().contains("journal"), "{error}");

    std::fs::write(&path, b"not a journal at all, but a text file").unwrap();
    assert!(FileJournal::open(&path, DAY).is_err());

    // The whole file still opens, with its key.
    std::fs::write(&path, &whole).unwrap();
    let journal = FileJournal::open(&path, DAY).unwrap();
    assert_eq!(journal.pending().await.unwrap()[0].key, "KEY-1");
}

/// An entry that cannot be read (another release, damage) is skipped and
/// kept: the other intents are still listed and resumed.
#[tokio::test]
async fn an_unreadable_entry_does_not_hide_the_others() {
    let path = journal_path("unreadable");
    {
        let journal = FileJournal::open(&path, DAY).unwrap();
        journal
            .begin(intent("order-1", "KEY-1", Duration::ZERO))
            .await
            .unwrap();
    }
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<'_, &str, &[u8]> =
                redb::TableDefinition::new("intents");
            let mut table = tx.open_table(table).unwrap();
            table
                .insert("legacy", &b"{\"name\":\"legacy\"}"[..])
                .unwrap();
        }
        tx.commit().unwrap();
    }
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
