//! Errors as the log shows them: an error with its whole source chain, and finding one cause
//! in it (the client's body error inside hyper's, ...).

/// `e` and its sources, outermost first.
pub fn sources<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// The first error of type `T` in `e`'s source chain, `e` included.
pub fn find_in_chain<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    sources(e).find_map(|e| e.downcast_ref::<T>())
}

/// An error with its sources, for logs (never includes request data).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
