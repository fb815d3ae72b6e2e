//! `docs/protocol.md` lists every opcode and every status with its number and name, and lists
//! nothing the code does not declare: the tables are checked against `Opcode::ALL` and
//! `Status::ALL`, so a new code cannot ship undocumented.

use ringmq::protocol::{Opcode, Status};
use std::collections::BTreeMap;

/// The rows of the Markdown table under `heading`: (number, name in backticks).
fn table_rows(doc: &str, heading: &str) -> BTreeMap<u16, String> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("docs/protocol.md has no {heading:?} section"));
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in doc[start..].lines().skip(1) {
        if line.starts_with('#') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 || !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        in_table = true;
        let (Ok(value), Some(name)) = (
            cells[1].parse::<u16>(),
            cells[2].strip_prefix('`').and_then(|n| n.strip_suffix('`')),
        ) else {
            continue;
        };
        assert!(
            rows.insert(value, name.to_string()).is_none(),
            "{heading}: value {value} listed twice"
        );
    }
    rows
}

fn check(heading: &str, code: BTreeMap<u16, String>) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("read docs/protocol.md");
    let documented = table_rows(&doc, heading);
    for (value, name) in &code {
        assert_eq!(
            documented.get(value),
            Some(name),
            "{heading}: {name} ({value}) is declared in ringmq-protocol (requests.rs, codes.rs) but not documented so"
        );
    }
    for (value, name) in &documented {
        assert!(
            code.contains_key(value),
            "{heading}: {name} ({value}) is documented but not declared"
        );
    }
}

#[test]
fn every_opcode_is_documented_with_its_number() {
    let code = Opcode::ALL
        .iter()
        .map(|o| (*o as u16, o.name().to_string()))
        .collect();
    check("## Opcodes", code);
}

#[test]
fn every_controller_opcode_is_documented_with_its_number() {
    let code = ringmq::protocol::controller::ControllerOpcode::ALL
        .iter()
        .map(|o| (*o as u16, o.name().to_string()))
        .collect();
    check("## Controller opcodes", code);
}

#[test]
fn every_status_is_documented_with_its_number() {
    let code = Status::ALL
        .iter()
        .map(|s| (*s as u16, s.name().to_string()))
        .collect();
    check("## Statuses", code);
}

#[test]
fn every_declared_value_decodes_to_itself() {
    for opcode in Opcode::ALL {
        assert_eq!(Opcode::from_u16(*opcode as u16), Some(*opcode));
    }
    for status in Status::ALL {
        assert_eq!(Status::from_u16(*status as u16), Some(*status));
    }
    assert_eq!(Opcode::from_u16(0), None);
    assert_eq!(Status::from_u16(999), None);
}
