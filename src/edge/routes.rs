//! The route table of the client API and matching a request against it.

use http::Method;

use crate::domain::Role;
use crate::edge::error::ApiError;

/// One route of the client API and the roles that may call it.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    /// The path template; `{id}` matches one segment.
    pub path: &'static str,
    /// A token needs one of these.
    pub roles: &'static [Role],
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    PostTransaction,
    ListTransactions,
    GetTransaction,
    PostAccount,
    GetAccount,
    PatchAccount,
    GetPostings,
    GetSwitches,
    // ---- webhooks (issue 13) ----
    PostWebhook,
    GetWebhooks,
    DeleteWebhook,
    GetFailedDeliveries,
    PostRedelivery,
}

/// **The** table of who may call what. Routing, authorization, the OpenAPI
/// document's sync test and the role tests all read it.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::POST,
        path: "/v1/transactions",
        roles: &[Role::Transact],
        endpoint: Endpoint::PostTransaction,
    },
    Route {
        method: Method::GET,
        path: "/v1/transactions",
        roles: &[Role::Transact, Role::Auditor],
        endpoint: Endpoint::ListTransactions,
    },
    Route {
        method: Method::GET,
        path: "/v1/transactions/{id}",
        roles: &[Role::Transact, Role::Auditor],
        endpoint: Endpoint::GetTransaction,
    },
    Route {
        method: Method::POST,
        path: "/v1/accounts",
        roles: &[Role::Operator],
        endpoint: Endpoint::PostAccount,
    },
    Route {
        method: Method::GET,
        path: "/v1/accounts/{id}",
        roles: &[Role::Transact, Role::Auditor],
        endpoint: Endpoint::GetAccount,
    },
    Route {
        method: Method::PATCH,
        path: "/v1/accounts/{id}",
        roles: &[Role::Operator],
        endpoint: Endpoint::PatchAccount,
    },
    Route {
        method: Method::GET,
        path: "/v1/accounts/{id}/postings",
        roles: &[Role::Transact, Role::Auditor],
        endpoint: Endpoint::GetPostings,
    },
    Route {
        method: Method::GET,
        path: "/v1/switches",
        roles: &[Role::Operator],
        endpoint: Endpoint::GetSwitches,
    },
    // ---- webhooks (issue 13) ----
    Route {
        method: Method::POST,
        path: "/v1/webhooks",
        roles: &[Role::Operator],
        endpoint: Endpoint::PostWebhook,
    },
    Route {
        method: Method::GET,
        path: "/v1/webhooks",
        roles: &[Role::Operator],
        endpoint: Endpoint::GetWebhooks,
    },
    Route {
        method: Method::DELETE,
        path: "/v1/webhooks/{id}",
        roles: &[Role::Operator],
        endpoint: Endpoint::DeleteWebhook,
    },
    Route {
        method: Method::GET,
        path: "/v1/webhooks/{id}/failed",
        roles: &[Role::Operator],
        endpoint: Endpoint::GetFailedDeliveries,
    },
    Route {
        method: Method::POST,
        path: "/v1/webhooks/deliveries/{id}/redeliver",
        roles: &[Role::Operator],
        endpoint: Endpoint::PostRedelivery,
    },
];

/// Matches `path` against a template; returns the `{id}` segment, if any.
fn match_path<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut id = None;
    let mut t = template.trim_matches('/').split('/');
    let mut p = path.trim_matches('/').split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// The route for a request: `Ok((route, id))`, or 404 / 405 with `Allow`.
pub(super) fn find_route<'p>(
    method: &Method,
    path: &'p str,
) -> Result<(&'static Route, &'p str), ApiError> {
    let mut allowed: Vec<&'static str> = Vec::new();
    for route in ROUTES {
        if let Some(id) = match_path(route.path, path) {
            if route.method == *method {
                return Ok((route, id.unwrap_or_default()));
            }
            allowed.push(route.method.as_str());
        }
    }
    match allowed.as_slice() {
        [] => Err(ApiError::NotFound),
        methods => Err(ApiError::MethodNotAllowed {
            allow: methods.join(", "),
        }),
    }
}

/// The route template: a bounded label for metrics and logs.
pub(super) fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| match_path(r.path, path).is_some())
        .map_or("unknown", |r| r.path)
}
