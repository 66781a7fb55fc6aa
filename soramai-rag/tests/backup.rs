//! A RAG corpus survives a backup and a restore on a fresh data directory (its encrypted index
//! files are objects like any other), and a corpus deleted after the snapshot stays deleted in a
//! restore of it: its key scope is gone from the backup's keys too.

use std::sync::Arc;

use soramai_core::backup;
use soramai_core::{Config, Core, LocalRootKey, Principal, TenantId, Tier};
use soramai_rag::{CorpusId, Document, Rag, SearchRequest};

#[test]
fn a_corpus_comes_back_from_a_backup_and_a_deleted_one_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Arc::new(LocalRootKey::generate());
    let core = Arc::new(Core::open(Config::new(dir.path().join("data"), root.clone())).expect("core"));
    let rag = Rag::new(core.clone(), 16 << 20);
    let acme = TenantId::new("acme").expect("id");
    core.create_tenant(&acme, Tier::Pro).expect("tenant");
    let p = Principal::operator(&acme);
    let (kept, dropped) = (CorpusId::new("handbook").expect("id"), CorpusId::new("drafts").expect("id"));
    for (corpus, text) in
        [(&kept, "The cloud council meets in Kumo every spring."), (&dropped, "Draft: the merger closes in May.")]
    {
        rag.create_corpus(&p, corpus).expect("corpus");
        rag.add_documents(&p, corpus, &[Document::text("d1", "Notes", text)]).expect("index");
    }
    let query = |rag: &Rag, corpus: &CorpusId, q: &str| {
        rag.search(&p, corpus, &SearchRequest::new(q, 3))
            .map(|hits| hits.into_iter().map(|h| h.doc_id).collect::<Vec<_>>())
    };
    assert_eq!(query(&rag, &kept, "where does the council meet").expect("search"), ["d1"]);

    let url = format!("file://{}", dir.path().join("backups").display());
    let snapshot = core.backup(&url).expect("backup");
    rag.delete_corpus(&p, &dropped).expect("delete");

    let target = backup::open_target(&url).expect("target");
    let config = Config::new(dir.path().join("restored"), root);
    let (restored, report) =
        backup::restore_backup(target.as_ref(), Some(&snapshot.snapshot), config).expect("restore");
    assert!(report.shredded_objects > 0, "the deleted corpus's index files are left out: {report:?}");
    let rag2 = Rag::new(Arc::new(restored), 16 << 20);
    assert_eq!(query(&rag2, &kept, "where does the council meet").expect("search after restore"), ["d1"]);
    assert!(query(&rag2, &dropped, "merger").is_err(), "a corpus deleted after the snapshot stays deleted");
}
