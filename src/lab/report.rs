//! How the lab's benches state a target's verdict, one spelling for every figure.

/// "met" or "NOT met" (capitals, so that a missed target stands out in a long report).
pub(crate) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}
