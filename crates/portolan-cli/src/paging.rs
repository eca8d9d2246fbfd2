//! Paged answers, followed transparently: the list RPCs answer a page at a time and
//! name the next page with `next_page_token`; [`collect`] asks page after page until
//! the rows run out or `--limit` rows are in hand.

use std::future::Future;

use portolan_proto::v1 as pb;

/// Rows asked for per page at most: the collector's default page.
pub const PAGE_SIZE: u32 = 10_000;

/// A list request that can ask for a page.
pub trait PagedRequest: Clone {
    /// Sets the page size and the token of the page wanted (empty: the first).
    fn set_page(&mut self, page_size: u32, page_token: String);
}

/// A list answer: a page of rows and the next page's token.
pub trait PagedResponse {
    /// A row.
    type Item;
    /// The rows and `next_page_token` (empty: the last page).
    fn into_page(self) -> (Vec<Self::Item>, String);
}

macro_rules! paged {
    ($($request:ty => $response:ty, $rows:ident: $item:ty;)*) => {$(
        impl PagedRequest for $request {
            fn set_page(&mut self, page_size: u32, page_token: String) {
                self.page_size = page_size;
                self.page_token = page_token;
            }
        }
        impl PagedResponse for $response {
            type Item = $item;
            fn into_page(self) -> (Vec<$item>, String) {
                (self.$rows, self.next_page_token)
            }
        }
    )*};
}

paged! {
    pb::ListHostsRequest => pb::ListHostsResponse, hosts: pb::HostSummary;
    pb::ListSocketsRequest => pb::ListSocketsResponse, sockets: pb::HostSocket;
    pb::ListFlowsRequest => pb::ListFlowsResponse, flows: pb::HostFlow;
    pb::ListFindingsRequest => pb::ListFindingsResponse, findings: pb::Finding;
    pb::ListEventsRequest => pb::ListEventsResponse, events: pb::HostEvent;
}

/// The rows of every page, up to the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows<T> {
    /// The rows, in the collector's order.
    pub rows: Vec<T>,
    /// More rows matched than the limit let through.
    pub more: bool,
}

/// The collector named a next page but gave no rows, or the same token twice: following
/// it would never end.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the collector's paging does not advance (a next page without rows on page {page}); retry, and report it if it persists"
)]
pub struct NoProgress {
    /// The page that did not advance (1 is the first).
    pub page: usize,
}

/// Asks `rpc` for `request`'s pages until the rows run out or `limit` rows are in hand
/// (0: no limit). Each page asks for at most [`PAGE_SIZE`] rows, and no more than are
/// still wanted.
pub async fn collect<Req, Resp, E, F, Fut>(
    mut request: Req,
    limit: u32,
    mut rpc: F,
) -> Result<Rows<Resp::Item>, E>
where
    Req: PagedRequest,
    Resp: PagedResponse,
    E: From<NoProgress>,
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Resp, E>>,
{
    let limit = if limit == 0 {
        usize::MAX
    } else {
        limit as usize
    };
    let mut rows = Vec::new();
    let mut token = String::new();
    let mut page = 0;
    loop {
        page += 1;
        let wanted = limit.saturating_sub(rows.len());
        let size = u32::try_from(wanted).unwrap_or(u32::MAX).min(PAGE_SIZE);
        request.set_page(size, token.clone());
        let (items, next) = rpc(request.clone()).await?.into_page();
        let got = items.len();
        rows.extend(items);
        if next.is_empty() {
            let more = rows.len() > limit;
            rows.truncate(limit);
            return Ok(Rows { rows, more });
        }
        if rows.len() >= limit {
            rows.truncate(limit);
            return Ok(Rows { rows, more: true });
        }
        if got == 0 || next == token {
            return Err(E::from(NoProgress { page }));
        }
        token = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default)]
    struct Req {
        page_size: u32,
        page_token: String,
    }

    impl PagedRequest for Req {
        fn set_page(&mut self, page_size: u32, page_token: String) {
            self.page_size = page_size;
            self.page_token = page_token;
        }
    }

    struct Resp(Vec<u32>, String);

    impl PagedResponse for Resp {
        type Item = u32;
        fn into_page(self) -> (Vec<u32>, String) {
            (self.0, self.1)
        }
    }

    #[derive(Debug, PartialEq)]
    struct Stuck;

    impl From<NoProgress> for Stuck {
        fn from(_: NoProgress) -> Self {
            Stuck
        }
    }

    /// A collector holding `total` rows `0..total`, paging them by their position.
    fn server(total: u32, sizes: &std::cell::RefCell<Vec<u32>>, req: Req) -> Resp {
        sizes.borrow_mut().push(req.page_size);
        let start: u32 = req.page_token.parse().unwrap_or(0);
        let end = (start + req.page_size).min(total);
        let next = if end < total {
            end.to_string()
        } else {
            String::new()
        };
        Resp((start..end).collect(), next)
    }

    fn run(total: u32, limit: u32) -> (Rows<u32>, Vec<u32>) {
        let sizes = std::cell::RefCell::new(Vec::new());
        let rows = block_on(collect(Req::default(), limit, |r| {
            let answer = server(total, &sizes, r);
            async move { Ok::<_, Stuck>(answer) }
        }))
        .expect("pages");
        (rows, sizes.into_inner())
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn pages_are_followed_up_to_the_limit() {
        let (rows, sizes) = run(25_000, 0);
        assert_eq!(rows.rows, (0..25_000).collect::<Vec<_>>());
        assert!(!rows.more);
        assert_eq!(sizes, [10_000, 10_000, 10_000]);

        let (rows, sizes) = run(25_000, 12_000);
        assert_eq!(rows.rows.len(), 12_000);
        assert!(rows.more);
        assert_eq!(sizes, [10_000, 2_000], "no more rows asked than wanted");

        let (rows, _) = run(5, 10);
        assert_eq!((rows.rows.len(), rows.more), (5, false));
        // Exactly the limit: nothing more matched.
        let (rows, _) = run(10, 10);
        assert_eq!((rows.rows.len(), rows.more), (10, false));
        let (rows, _) = run(11, 10);
        assert_eq!((rows.rows.len(), rows.more), (10, true));
    }

    #[test]
    fn a_next_page_without_rows_is_an_error_not_a_loop() {
        let result = block_on(collect(Req::default(), 0, |_| async {
            Ok::<_, Stuck>(Resp(Vec::new(), "again".into()))
        }));
        assert_eq!(result, Err(Stuck));
    }
}
