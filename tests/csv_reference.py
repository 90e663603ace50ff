"""The CSV record rule that ingest documents, written plainly (a character loop, no regex and no
Spark), so that tests can count the records a file holds and compare with what ingest read."""
from __future__ import annotations


def scan(text: str, inside: bool, delimiter: str = ",") -> tuple[bool, int]:
    """Read `text` from the start of a record (or, when `inside`, from inside a quoted field):
    whether it ends inside an open quoted field, and how many fields it holds. A field is quoted
    when it starts with a quote; inside, a doubled quote is a quote."""
    at_start, fields, i = not inside, 1, 0
    while i < len(text):
        c = text[i]
        if inside:
            if c == '"' and text[i + 1:i + 2] == '"':
                i += 2
                continue
            if c == '"':
                inside = False
        elif at_start and c == '"':
            inside = True
            at_start = False
        else:
            at_start = c == delimiter
            fields += c == delimiter
        i += 1
    return inside, fields


def reference_records(lines: list[str], max_record_lines: int, columns: int) -> list[str]:
    """The records in a file's lines after its header (lines[0]): a line that ends inside an open
    quoted field continues on the next lines up to the first one that closes it, unless none does
    within `max_record_lines` more lines or the joined lines do not hold `columns` fields; then
    the line is a record alone (an unbalanced quote)."""
    records, i = [], 1
    while i < len(lines):
        if scan(lines[i], False)[0]:
            j = next((j for j in range(i + 1, min(i + 1 + max_record_lines, len(lines)))
                      if not scan(lines[j], True)[0]), None)
            joined = "\n".join(lines[i:j + 1]) if j is not None else ""
            if j is not None and scan(joined, False)[1] == columns:
                records.append(joined)
                i = j + 1
                continue
        records.append(lines[i])
        i += 1
    return records
