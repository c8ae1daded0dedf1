//! `orderflow import FILE`: loads a catalog in bulk, straight into the
//! database (write-around: the caches are not filled, only told).
//!
//! The file is CSV with a header row (`sku,name,price_cents,currency,stock`,
//! and optionally `description` and `category`, in any order) or JSON lines (one object with those fields per line),
//! chosen by the extension (`.csv`; `.jsonl`, `.ndjson`, `.json`) or, for
//! another name, by whether the first character is `{`. A product whose SKU
//! exists gets the new fields; a new SKU is inserted.
//!
//! Every row is validated by the same rules as the admin API before anything
//! is written, and a file with a bad row imports nothing (the report names
//! each bad line). Then rows are written in transactions of
//! [`BATCH`] and, after each, the catalog leaves a floor of every new
//! version in the caches and tells the other processes (over Redis), so no
//! cache serves what the import replaced.

use std::path::Path;

use anyhow::Context;
use orderflow_domain::product::ProductDraft;
use serde::Deserialize;

use crate::App;

/// Rows per transaction.
pub const BATCH: usize = 500;

/// One row of the file, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    sku: String,
    name: String,
    price_cents: i64,
    currency: String,
    stock: i64,
    #[serde(default)]
    description: String,
    #[serde(default)]
    category: Option<String>,
}

impl Row {
    fn draft(&self) -> Result<ProductDraft, String> {
        ProductDraft::new(
            &self.sku,
            &self.name,
            self.price_cents,
            &self.currency,
            self.stock,
        )
        // An empty CSV cell: no category.
        .and_then(|draft| {
            let category = self.category.as_deref().filter(|c| !c.trim().is_empty());
            draft.described(&self.description, category)
        })
        .map_err(|e| format!("{}: {}", e.field, e.message))
    }
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportReport {
    /// New SKUs.
    pub inserted: usize,
    /// Existing SKUs whose fields were replaced.
    pub updated: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    JsonLines,
}

fn format_of(path: &Path, text: &str) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => Format::Csv,
        Some("jsonl" | "ndjson" | "json") => Format::JsonLines,
        _ if text.trim_start().starts_with('{') => Format::JsonLines,
        _ => Format::Csv,
    }
}

/// Every row of `text` as a draft, or every bad line with what is wrong.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<Vec<ProductDraft>> {
    let mut drafts = Vec::new();
    let mut errors = Vec::new();
    let mut take = |line: usize, row: Result<Row, String>| match row.and_then(|r| r.draft()) {
        Ok(draft) => drafts.push(draft),
        Err(error) => errors.push(format!("line {line}: {error}")),
    };
    match format_of(path, text) {
        Format::JsonLines => {
            for (index, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                take(
                    index + 1,
                    serde_json::from_str::<Row>(line).map_err(|e| e.to_string()),
                );
            }
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(text.as_bytes());
            let headers = reader.headers()?.clone();
            let mut record = csv::StringRecord::new();
            loop {
                match reader.read_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) => {
                        let line = record.position().map_or(0, |p| p.line() as usize);
                        take(
                            line,
                            record
                                .deserialize::<Row>(Some(&headers))
                                .map_err(|e| e.to_string()),
                        );
                    }
                    Err(error) => take(
                        error.position().map_or(0, |p| p.line() as usize),
                        Err(error.to_string()),
                    ),
                }
            }
        }
    }
    if !errors.is_empty() {
        anyhow::bail!(
            "nothing imported; {} bad row(s):\n  {}",
            errors.len(),
            errors.join("\n  ")
        );
    }
    Ok(drafts)
}

/// Imports the file at `path` (see the module docs).
pub async fn import_file(app: &App, path: &Path) -> anyhow::Result<ImportReport> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let drafts = parse(path, &text)?;
    let mut report = ImportReport::default();
    let mut drafts = drafts.into_iter().peekable();
    while drafts.peek().is_some() {
        let batch: Vec<_> = drafts.by_ref().take(BATCH).collect();
        let stored = app
            .catalog
            .import(batch)
            .await
            .context("writing the imported products")?;
        let inserted = stored.iter().filter(|p| p.version == 1).count();
        report.inserted += inserted;
        report.updated += stored.len() - inserted;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_lines_parse_to_the_same_drafts() {
        let csv =
            "sku,name,price_cents,currency,stock\nMUG-1, Mug ,250,EUR,10\nCUP-2,Cup,199,EUR,0\n";
        let jsonl = r#"{"sku":"MUG-1","name":"Mug","price_cents":250,"currency":"EUR","stock":10}

{"sku":"CUP-2","name":"Cup","price_cents":199,"currency":"EUR","stock":0}
"#;
        let from_csv = parse(Path::new("catalog.csv"), csv).unwrap();
        let from_jsonl = parse(Path::new("catalog.jsonl"), jsonl).unwrap();
        assert_eq!(from_csv, from_jsonl);
        assert_eq!(from_csv.len(), 2);
        assert_eq!(from_csv[0].name, "Mug");
        // Without a telling extension the first character decides.
        assert_eq!(parse(Path::new("catalog.txt"), jsonl).unwrap(), from_csv);
        assert_eq!(parse(Path::new("catalog"), csv).unwrap(), from_csv);
    }

    #[test]
    fn every_bad_row_is_named_and_nothing_passes() {
        let csv = "sku,name,price_cents,currency,stock\nOK-1,Fine,1,EUR,1\nBAD 2,Mug,1,EUR,1\nOK-3,Mug,-5,EUR,1\nOK-4,Mug,abc,EUR,1\n";
        let error = parse(Path::new("c.csv"), csv).unwrap_err().to_string();
        assert!(error.contains("3 bad row(s)"), "{error}");
        assert!(error.contains("line 3: sku"), "{error}");
        assert!(error.contains("line 4: price_cents"), "{error}");
        assert!(error.contains("line 5:"), "{error}");
        let jsonl = "{\"sku\":\"A\",\"name\":\"A\",\"price_cents\":1,\"currency\":\"EUR\",\"stock\":1,\"extra\":1}\n";
        let error = parse(Path::new("c.jsonl"), jsonl).unwrap_err().to_string();
        assert!(error.contains("line 1: unknown field `extra`"), "{error}");
    }
}
