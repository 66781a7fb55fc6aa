// The hand-written questions about `handbook.md`, shared by the BM25 relevance test and the
// hybrid recall test in `soramai/tests/rag_model.rs` (included with `include!`).

/// (question, a phrase only the answering section contains)
const QA: &[(&str, &str)] = &[
    ("How many days of paid leave do staff get?", "thirty days of paid leave"),
    ("Who approves travel expenses?", "travel must be approved"),
    ("What happens if I lose my laptop?", "report a lost laptop"),
    ("How often are passwords rotated?", "passwords every ninety days"),
    ("When is payroll run?", "payroll runs on the last"),
    ("Can I work from another country?", "working abroad"),
    ("How do I request a new monitor?", "equipment requests"),
    ("What is the parental leave policy?", "parental leave"),
    ("Where do I report a security incident?", "security incident"),
    ("How are performance reviews scheduled?", "reviews happen twice"),
    ("What is the policy on gifts from vendors?", "gifts from vendors"),
    ("How do I book a meeting room?", "meeting rooms are booked"),
];
