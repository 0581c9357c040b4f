//! Micro-batches sized by memory (`grpo.micro_batch = 0`): the rows of an update, in order,
//! cut where the next row would take a forward/backward pass past a byte budget.

use std::ops::Range;

/// Activation memory one micro-batch may keep for its backward under `grpo.micro_batch = 0`.
/// The default `arlrr train` (tiny model, 48 rows of <= ~170 tokens: about 250 MB by
/// `Policy::train_bytes`) stays one micro-batch, so its figures stay bit for bit; SmolLM2 rows
/// of ~120 tokens (~180 MB each) go five at a time. Half the budget (two or three rows per
/// pass) made the SmolLM2 bench step's training markedly slower for little less peak memory
/// (docs/benchmarks.md, "Memory of a training step").
pub(crate) const ACTIVATION_BUDGET: u64 = 1 << 30;

/// Consecutive ranges covering rows `0..lens.len()` in order; row `r` is (prompt tokens,
/// completion tokens). A range of rows costs `cost(rows, longest prompt, longest completion)`
/// (the batch pads to both) and grows while that stays within `budget`; a row over the budget
/// on its own gets a range to itself.
pub(crate) fn budget_ranges(
    lens: &[(usize, usize)],
    budget: u64,
    cost: impl Fn(Range<usize>, usize, usize) -> u64,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut p, mut c) = (0, 0, 0);
    for (i, &(rp, rc)) in lens.iter().enumerate() {
        let (np, nc) = (p.max(rp), c.max(rc));
        if i > start && cost(start..i + 1, np, nc) > budget {
            out.push(start..i);
            (start, p, c) = (i, rp, rc);
        } else {
            (p, c) = (np, nc);
        }
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of the rows padded to `p + c` tokens at 1 byte a token.
    fn tokens(rows: Range<usize>, p: usize, c: usize) -> u64 {
        (rows.len() * (p + c)) as u64
    }

    #[test]
    fn ranges_cover_the_rows_in_order_within_the_budget() {
        let lens = [
            (3, 5),
            (2, 6),
            (4, 1),
            (1, 1),
            (9, 9),
            (2, 2),
            (2, 3),
            (1, 1),
        ];
        let ranges = budget_ranges(&lens, 20, tokens);
        assert_eq!(ranges, [0..2, 2..4, 4..5, 5..8]);
        let mut next = 0;
        for r in &ranges {
            assert_eq!(r.start, next, "consecutive, in order");
            assert!(!r.is_empty());
            let p = lens[r.clone()].iter().map(|x| x.0).max().unwrap();
            let c = lens[r.clone()].iter().map(|x| x.1).max().unwrap();
            // only a single row may exceed the budget (row 4: 18 tokens fit, 2 rows would not)
            assert!(tokens(r.clone(), p, c) <= 20 || r.len() == 1);
            next = r.end;
        }
        assert_eq!(next, lens.len(), "every row");
    }

    #[test]
    fn a_row_over_the_budget_goes_alone_and_a_roomy_budget_takes_all() {
        let lens = [(2, 2), (30, 30), (2, 2), (2, 2)];
        assert_eq!(budget_ranges(&lens, 10, tokens), [0..1, 1..2, 2..4]);
        assert_eq!(budget_ranges(&lens, u64::MAX, tokens), vec![(0..4)]);
        assert_eq!(budget_ranges(&lens, 10, |_, _, _| 0), vec![(0..4)]);
        assert!(budget_ranges(&[], 10, tokens).is_empty());
    }
}
