//! The HTTP client under [`crate::api`]: hyper's client with rustls (ring) and the Mozilla
//! roots of `webpki-roots`, HTTP/1.1 or HTTP/2 by ALPN; plain `http://` too, for a local fake
//! of the WeChat API. One call is one JSON request and its reply, bounded in time (connect,
//! send and read together) and in size. Redirects are not followed: the API does not redirect,
//! and the query carries the access token.
//!
//! `https://` calls go through the proxy the environment names (`HTTPS_PROXY`, `ALL_PROXY`,
//! `NO_PROXY`, as curl reads them) when there is one: a CONNECT tunnel through an `http://`
//! proxy, TLS inside it. `http://` calls (a local fake) always go direct.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The longest a connection may take to open, whatever the call's timeout.
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(3);
/// How long an idle connection is kept for the next call.
const POOL_IDLE: Duration = Duration::from_secs(50);

/// Why an HTTP exchange failed. It never carries the URL: the query holds the access token.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No complete answer within the call's timeout.
    #[error("no complete answer within {0:?}")]
    TimedOut(Duration),
    /// No connection could be opened (DNS, TCP, TLS).
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or the answer read.
    #[error("the connection failed")]
    Exchange(#[source] BoxError),
    /// The server answered with a status other than 2xx.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The request could not be built (a malformed URL).
    #[error("invalid request")]
    Build(#[source] BoxError),
    /// The TLS configuration could not be set up.
    #[error("cannot set up TLS")]
    Tls(#[source] BoxError),
}

impl RequestError {
    /// Whether the call ran out of time, or its connection did.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::TimedOut(_) => true,
            Self::Connect(e) => {
                let mut cause: Option<&(dyn StdError + 'static)> = Some(&**e);
                while let Some(e) = cause {
                    let io = e.downcast_ref::<std::io::Error>();
                    if io.is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
                        return true;
                    }
                    cause = e.source();
                }
                false
            }
            _ => false,
        }
    }
}

/// A pooled client. Cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<Connector>, Full<Bytes>>,
    /// Bounds a whole call: connect, send, and read the answer.
    timeout: Duration,
    user_agent: HeaderValue,
}

impl HttpClient {
    /// A client whose calls each take at most `timeout`, sending `user_agent`, through the
    /// proxies the environment names.
    pub(crate) fn new(timeout: Duration, user_agent: HeaderValue) -> Result<Self, RequestError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RequestError::Tls(Box::new(e)))?
            .with_webpki_roots()
            .with_no_client_auth();
        Ok(Self::with(timeout, user_agent, Matcher::from_env(), tls))
    }

    /// [`HttpClient::new`] with the proxies of `proxies` and the TLS configuration `tls`.
    fn with(
        timeout: Duration,
        user_agent: HeaderValue,
        proxies: Matcher,
        tls: rustls::ClientConfig,
    ) -> Self {
        let mut http = HttpConnector::new();
        // The TLS layer above takes `https://`; the fake WeChat is plain `http://`.
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout.min(CONNECT_TIMEOUT_MAX)));
        http.set_nodelay(true);
        // ALPN offers h2 and http/1.1 (set on `tls` by the builder).
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(Connector {
                direct: http,
                proxies: Arc::new(proxies),
            });
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(https);
        Self {
            client,
            timeout,
            user_agent,
        }
    }

    /// Replaces the `User-Agent` sent with every call.
    pub(crate) fn set_user_agent(&mut self, user_agent: HeaderValue) {
        self.user_agent = user_agent;
    }

    /// POSTs `json` to `url`: the body of a 2xx answer if it is at most `limit` bytes, `None`
    /// if it is longer.
    pub(crate) async fn post_json(
        &self,
        url: &str,
        json: Vec<u8>,
        limit: usize,
    ) -> Result<Option<Bytes>, RequestError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::USER_AGENT, self.user_agent.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| RequestError::Build(Box::new(e)))?;
        tokio::time::timeout(self.timeout, self.exchange(request, limit))
            .await
            .unwrap_or(Err(RequestError::TimedOut(self.timeout)))
    }

    /// GETs `url`: the body of a 2xx answer if it is at most `limit` bytes, `None` if it is
    /// longer.
    pub(crate) async fn get_json(
        &self,
        url: &str,
        limit: usize,
    ) -> Result<Option<Bytes>, RequestError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(header::USER_AGENT, self.user_agent.clone())
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| RequestError::Build(Box::new(e)))?;
        tokio::time::timeout(self.timeout, self.exchange(request, limit))
            .await
            .unwrap_or(Err(RequestError::TimedOut(self.timeout)))
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<Option<Bytes>, RequestError> {
        let response = self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                RequestError::Connect(Box::new(e))
            } else {
                RequestError::Exchange(Box::new(e))
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(RequestError::Status(status.as_u16()));
        }
        read_capped(response.into_body(), limit).await
    }
}

/// Opens the TCP stream a call runs on: to the API directly, or through a CONNECT tunnel when
/// a proxy takes `https://` calls to its host. TLS runs on top either way, to the API's host.
#[derive(Clone)]
struct Connector {
    direct: HttpConnector,
    proxies: Arc<Matcher>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let proxy = match dst.scheme_str() {
            Some("https") => self.proxies.intercept(&dst),
            _ => None,
        };
        let Some(proxy) = proxy else {
            let connecting = self.direct.call(dst);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        if proxy.uri().scheme_str() != Some("http") {
            return Box::pin(std::future::ready(Err(
                "only an http:// proxy is supported (a CONNECT tunnel)".into(),
            )));
        }
        let mut tunnel = Tunnel::new(proxy.uri().clone(), self.direct.clone());
        if let Some(auth) = proxy.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        Box::pin(async move { tunnel.call(dst).await.map_err(Into::into) })
    }
}

/// The body if it is at most `limit` bytes, `None` if it is longer. Reads frame by frame and
/// stops past the limit, so a long body is never held in memory.
async fn read_capped<B>(mut body: B, limit: usize) -> Result<Option<Bytes>, RequestError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    // An announced length (`Content-Length`) past the limit is refused before reading.
    if body.size_hint().lower() > u64::try_from(limit).unwrap_or(u64::MAX) {
        return Ok(None);
    }
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| RequestError::Exchange(e.into()))?;
        if let Ok(data) = frame.into_data() {
            if read.len() + data.len() > limit {
                return Ok(None);
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(Some(Bytes::from(read)))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;

    const LIMIT: usize = 64;

    fn client(timeout: Duration) -> HttpClient {
        HttpClient::new(timeout, HeaderValue::from_static("test-agent/1")).unwrap()
    }

    /// A server for one exchange: it answers `answer` (unless `None`: it then keeps the
    /// connection open and silent), and hands back what it read.
    async fn one_shot(answer: Option<&'static str>) -> (String, oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/cgi-bin/x?access_token=T",
            listener.local_addr().unwrap()
        );
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let _ = tx.send(read_request(&mut socket).await);
            match answer {
                Some(answer) => socket.write_all(answer.as_bytes()).await.unwrap(),
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
        });
        (url, rx)
    }

    /// The request's head and body (by its `content-length`), as text.
    async fn read_request(socket: &mut tokio::net::TcpStream) -> String {
        let mut read = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&read).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    return text;
                }
            }
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                return text;
            }
            read.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn a_json_post_sends_its_user_agent_and_reads_the_reply() {
        let (url, request) = one_shot(Some(
            "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
        ))
        .await;
        let body = client(Duration::from_secs(5))
            .post_json(&url, br#"{"a":1}"#.to_vec(), LIMIT)
            .await
            .unwrap();
        assert_eq!(body.as_deref(), Some(&b"{\"ok\":true}"[..]));
        let request = request.await.unwrap().to_ascii_lowercase();
        assert!(request.starts_with("post /cgi-bin/x?access_token=t http/1.1"));
        assert!(request.contains("user-agent: test-agent/1"));
        assert!(request.contains("content-type: application/json"));
        assert!(request.ends_with("{\"a\":1}"));
    }

    #[tokio::test]
    async fn a_reply_past_the_limit_is_not_read() {
        let announced = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
        let (url, _) = one_shot(Some(announced)).await;
        let body = client(Duration::from_secs(5))
            .post_json(&url, Vec::new(), LIMIT)
            .await;
        assert!(matches!(body, Ok(None)), "{body:?}");

        let chunked = concat!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "28\r\n0123456789012345678901234567890123456789\r\n",
            "28\r\n0123456789012345678901234567890123456789\r\n0\r\n\r\n"
        );
        let (url, _) = one_shot(Some(chunked)).await;
        let body = client(Duration::from_secs(5))
            .post_json(&url, Vec::new(), LIMIT)
            .await;
        assert!(matches!(body, Ok(None)), "{body:?}");
    }

    #[tokio::test]
    async fn a_status_other_than_2xx_is_an_error() {
        let (url, _) = one_shot(Some(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n",
        ))
        .await;
        let e = client(Duration::from_secs(5))
            .post_json(&url, Vec::new(), LIMIT)
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::Status(502)), "{e:?}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_the_error_withholds_the_url() {
        let (url, _) = one_shot(None).await;
        let e = client(Duration::from_millis(200))
            .post_json(&url, Vec::new(), LIMIT)
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        assert!(!format!("{e} {e:?}").contains("access_token"));
    }

    #[tokio::test]
    async fn an_https_call_goes_through_the_proxy_as_a_connect_tunnel() {
        let (proxy, request) =
            one_shot(Some("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")).await;
        let proxy = proxy.split("/cgi-bin").next().unwrap().to_owned();
        let proxies = Matcher::builder().https(proxy).no("localhost").build();
        let client = HttpClient::with(
            Duration::from_secs(5),
            HeaderValue::from_static("test-agent/1"),
            proxies,
            tls_trusting(&[]),
        );
        let e = client
            .post_json(
                "https://api.example.test/cgi-bin/x?access_token=T",
                Vec::new(),
                LIMIT,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::Connect(_)), "{e:?}");
        let request = request.await.unwrap();
        assert!(
            request.starts_with("CONNECT api.example.test:443 HTTP/1.1"),
            "{request}"
        );
        assert!(!request.contains("access_token"));
    }

    /// A TLS client configuration that trusts `roots` (PEM) only.
    fn tls_trusting(roots: &[&[u8]]) -> rustls::ClientConfig {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut store = rustls::RootCertStore::empty();
        for pem in roots {
            store
                .add(CertificateDer::from_pem_slice(pem).unwrap())
                .unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth()
    }

    /// A TLS server on localhost (a test CA's certificate, `testdata/tls`), offering `alpn`,
    /// answering every request with its HTTP version.
    async fn tls_server(alpn: &[u8]) -> String {
        use hyper::service::service_fn;
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let cert = CertificateDer::from_pem_slice(include_bytes!("../testdata/tls/localhost.pem"))
            .unwrap();
        let key =
            PrivateKeyDer::from_pem_slice(include_bytes!("../testdata/tls/localhost.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let tls = TokioIo::new(acceptor.accept(socket).await.unwrap());
            let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                let version = format!("{:?}", request.version());
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    version,
                ))))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(tls, service)
                .await;
        });
        format!("https://localhost:{port}/cgi-bin/x?access_token=T")
    }

    #[tokio::test]
    async fn https_is_spoken_over_http2_and_http1_with_a_verified_certificate() {
        let trusting = || tls_trusting(&[include_bytes!("../testdata/tls/ca.pem")]);
        for (alpn, version) in [(&b"h2"[..], "HTTP/2.0"), (b"http/1.1", "HTTP/1.1")] {
            let url = tls_server(alpn).await;
            let client = HttpClient::with(
                Duration::from_secs(5),
                HeaderValue::from_static("test-agent/1"),
                Matcher::builder().build(),
                trusting(),
            );
            let body = client.post_json(&url, b"{}".to_vec(), LIMIT).await;
            assert_eq!(body.unwrap().as_deref(), Some(version.as_bytes()));
        }
    }

    #[tokio::test]
    async fn https_to_a_server_of_an_unknown_authority_fails_to_connect() {
        let url = tls_server(b"h2").await;
        let client = HttpClient::with(
            Duration::from_secs(5),
            HeaderValue::from_static("test-agent/1"),
            Matcher::builder().build(),
            tls_trusting(&[]),
        );
        let e = client.post_json(&url, Vec::new(), LIMIT).await.unwrap_err();
        assert!(matches!(e, RequestError::Connect(_)), "{e:?}");
    }

    #[test]
    fn a_connection_that_timed_out_is_a_timeout() {
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
        assert!(RequestError::Connect(Box::new(timed_out)).is_timeout());
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!RequestError::Connect(Box::new(refused)).is_timeout());
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let e = client(Duration::from_secs(5))
            .post_json(&url, Vec::new(), LIMIT)
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::Connect(_)), "{e:?}");
        assert!(!e.is_timeout());
    }
}
