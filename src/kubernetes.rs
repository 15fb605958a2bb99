//! The few Kubernetes API requests stock `kubectl exec`, `kubectl attach`
//! and `kubectl cp` make (`kubernetes_api = true`, SPEC §11): discovery,
//! the pod GET, and the exec/attach WebSocket, which becomes a request to
//! the endpoint carrying a [`KubeExec`] for the backend.
//!
//! Nothing here decides what runs: kubectl's `command` is passed to the
//! backend as a request, and the backend's spec is what starts. Errors are
//! Kubernetes `Status` objects, so kubectl shows them as it shows an API
//! server's.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;

use crate::reply::Said;

/// What kubectl asked for on an exec or attach WebSocket: a request
/// extension the backends read (the controller as query parameters, a
/// JWT's `k8s` claim pinned against it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeExec {
    /// The namespace of the path.
    pub namespace: String,
    /// The pod of the path (for `attach`, the named session).
    pub pod: String,
    /// `container=`, when given.
    pub container: Option<String>,
    /// `command=` (repeated), kubectl's argv; empty for `attach`.
    pub command: Vec<String>,
    /// `tty=true`.
    pub tty: bool,
    /// `stdin=true`: without it the process's input is closed at once.
    pub stdin: bool,
    /// `kubectl attach` (the `attach` subresource) rather than `exec`.
    pub attach: bool,
    /// Asked for over SPDY, as kubectl before 1.30 does and later ones do
    /// after a refused WebSocket: never served, but the backend is asked,
    /// so a refusal reads the same both ways.
    pub spdy: bool,
}

/// What a SPDY exec whose token was allowed is told.
pub const SPDY_REFUSED: &str =
    "this server serves exec and attach over WebSocket only (v5.channel.k8s.io): use kubectl 1.30 or later";

impl KubeExec {
    /// The subresource asked for: `exec` or `attach`.
    pub fn subresource(&self) -> &'static str {
        if self.attach { "attach" } else { "exec" }
    }
}

/// What a request under the Kubernetes API paths is.
#[derive(Debug, PartialEq, Eq)]
pub enum KubeRoute {
    /// A discovery document, answered as it is.
    Discovery(serde_json::Value),
    /// `GET /api/v1/namespaces/{ns}/pods/{pod}`.
    Pod {
        /// The namespace.
        namespace: String,
        /// The pod.
        pod: String,
    },
    /// The exec or attach WebSocket.
    Exec(KubeExec),
    /// Under the API paths, but nothing this server answers.
    NotFound,
}

/// The API paths: requests for anything else are not this module's.
pub fn is_api_path(path: &str) -> bool {
    path == "/api" || path == "/apis" || path.starts_with("/api/") || path.starts_with("/apis/")
}

/// What `request` asks of the Kubernetes API; `None` outside its paths.
pub fn route<B>(request: &Request<B>) -> Option<KubeRoute> {
    let path = request.uri().path();
    if !is_api_path(path) {
        return None;
    }
    let get = request.method() == Method::GET || request.method() == Method::HEAD;
    let route = match path.trim_end_matches('/') {
        "/api" if get => KubeRoute::Discovery(api_versions()),
        "/apis" if get => KubeRoute::Discovery(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})),
        "/api/v1" if get => KubeRoute::Discovery(api_resources()),
        _ => pod_route(request, path),
    };
    Some(route)
}

fn pod_route<B>(request: &Request<B>, path: &str) -> KubeRoute {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (namespace, pod, subresource) = match segments.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", pod] => (*ns, *pod, None),
        ["api", "v1", "namespaces", ns, "pods", pod, sub] => (*ns, *pod, Some(*sub)),
        _ => return KubeRoute::NotFound,
    };
    if !is_name(namespace) || !is_name(pod) {
        return KubeRoute::NotFound;
    }
    let (namespace, pod) = (namespace.to_string(), pod.to_string());
    match subresource {
        None if request.method() == Method::GET => KubeRoute::Pod { namespace, pod },
        Some(sub @ ("exec" | "attach")) => {
            let spdy = request
                .headers()
                .get(http::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().starts_with("spdy/"));
            let mut exec = KubeExec {
                namespace,
                pod,
                container: None,
                command: Vec::new(),
                tty: false,
                stdin: false,
                attach: sub == "attach",
                spdy,
            };
            let query = request.uri().query().unwrap_or("");
            for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
                match &*name {
                    "container" => exec.container = Some(value.into_owned()),
                    "command" if !exec.attach => exec.command.push(value.into_owned()),
                    "tty" => exec.tty = value == "true" || value == "1",
                    "stdin" => exec.stdin = value == "true" || value == "1",
                    _ => {}
                }
            }
            KubeRoute::Exec(exec)
        }
        _ => KubeRoute::NotFound,
    }
}

/// A DNS-1123 name as Kubernetes has them (and a session id may be one).
fn is_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

fn api_versions() -> serde_json::Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn api_resources() -> serde_json::Value {
    let resource = |name: &str, verbs: &[&str]| json!({"name": name, "singularName": "", "namespaced": true, "kind": if name == "pods" { "Pod" } else { "PodExecOptions" }, "verbs": verbs});
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            resource("pods", &["get"]),
            resource("pods/exec", &["create", "get"]),
            resource("pods/attach", &["create", "get"]),
        ],
    })
}

/// A running pod `pod` with one container per name in `containers`: what
/// kubectl reads before it execs (it refuses a pod that is not running and
/// a `-c` naming no container of the pod).
pub fn pod(namespace: &str, pod: &str, containers: &[String]) -> serde_json::Value {
    let specs: Vec<_> = containers.iter().map(|name| json!({"name": name, "image": "ws-subprocess"})).collect();
    let statuses: Vec<_> = containers
        .iter()
        .map(|name| json!({"name": name, "ready": true, "restartCount": 0, "image": "ws-subprocess", "imageID": "", "state": {"running": {}}}))
        .collect();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": pod, "namespace": namespace},
        "spec": {"containers": specs},
        "status": {"phase": "Running", "containerStatuses": statuses},
    })
}

/// A JSON response.
pub fn json_response<B: From<Bytes>>(status: StatusCode, value: &serde_json::Value) -> Response<B> {
    let mut response = Response::new(B::from(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A Kubernetes `Status` for a refusal: the message, and the reason the API
/// server gives for the code.
pub fn status<B: From<Bytes>>(code: StatusCode, message: &str) -> Response<B> {
    let reason = match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut response = json_response(code, &body);
    response.extensions_mut().insert(Said(message.into()));
    response
}

/// `response` (a refusal of the endpoint) as a `Status`, keeping its
/// headers (`Retry-After`); a response that is no refusal is left alone.
pub fn as_status<B: From<Bytes>>(response: Response<B>) -> Response<B> {
    if response.status().as_u16() < 400 {
        return response;
    }
    let message = match response.extensions().get::<Said>() {
        Some(said) => said.0.to_string(),
        None => response.status().canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let (mut parts, _) = response.into_parts();
    let fresh: Response<B> = status(parts.status, &message);
    let (fresh, body) = fresh.into_parts();
    parts.headers.insert(http::header::CONTENT_TYPE, fresh.headers[http::header::CONTENT_TYPE].clone());
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    #[test]
    fn exec_queries_read_as_kubectl_writes_them() {
        let uri = "/api/v1/namespaces/default/pods/box/exec?command=sh&command=-c&command=echo%20hi&container=main&stdin=true&stdout=true&stderr=true&tty=false";
        let Some(KubeRoute::Exec(exec)) = route(&get(uri)) else { panic!() };
        assert_eq!(exec.command, ["sh", "-c", "echo hi"]);
        assert_eq!(
            (exec.namespace.as_str(), exec.pod.as_str(), exec.container.as_deref()),
            ("default", "box", Some("main"))
        );
        assert!(exec.stdin && !exec.tty && !exec.attach);
        let Some(KubeRoute::Exec(attach)) = route(&get("/api/v1/namespaces/ns/pods/s1/attach?command=x&tty=true"))
        else {
            panic!()
        };
        assert!(attach.attach && attach.tty && attach.command.is_empty());
    }

    #[test]
    fn other_api_paths_are_404_and_the_rest_is_not_ours() {
        assert_eq!(route(&get("/api/v1/namespaces/ns/pods")), Some(KubeRoute::NotFound));
        assert_eq!(route(&get("/api/v1/namespaces/ns/pods/p/log")), Some(KubeRoute::NotFound));
        assert_eq!(route(&get("/api/v1/namespaces/n%2Fs/pods/p")), Some(KubeRoute::NotFound));
        assert_eq!(route(&get("/ws")), None);
        assert_eq!(route(&get("/apixyz")), None);
        let spdy = Request::post("/api/v1/namespaces/ns/pods/p/exec").header("upgrade", "SPDY/3.1").body(()).unwrap();
        assert!(matches!(route(&spdy), Some(KubeRoute::Exec(KubeExec { spdy: true, .. }))));
    }

    #[test]
    fn refusals_become_statuses() {
        let refused: Response<crate::reply::Body> = crate::reply::plain(StatusCode::FORBIDDEN, "forbidden");
        let status = as_status(refused);
        assert_eq!(status.headers()["content-type"], "application/json");
        assert_eq!(status.extensions().get::<Said>().unwrap().0.as_ref(), "forbidden");
    }
}
