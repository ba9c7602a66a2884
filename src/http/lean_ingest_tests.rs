use super::*;

fn next(request: &str) -> Next {
    next_request(request.as_bytes(), &Secret::new("s3cret"), 100)
}

#[test]
fn only_a_plain_authorized_post_is_served_here() {
    let good = "POST /ingest HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\nContent-Length: 12\r\n\r\n";
    assert_eq!(
        next(good),
        Next::Ingest {
            head: good.len(),
            body: 12
        }
    );
    let relaxed = "POST /ingest HTTP/1.1\r\nauthorization: bearer  s3cret \r\ncontent-length: 0\r\nConnection: Keep-Alive\r\n\r\n";
    assert_eq!(
        next(relaxed),
        Next::Ingest {
            head: relaxed.len(),
            body: 0
        },
        "names and the scheme in any case, the token trimmed, keep-alive"
    );
    assert_eq!(next("POST /ingest HTTP/1.1\r\nHost: a\r\n"), Next::More);
    assert_eq!(next("POST /ing"), Next::More);
    assert_eq!(next(""), Next::More);
    for other in [
        "POST /ingest HTTP/1.1\r\nAuthorization: Bearer wrong\r\nContent-Length: 1\r\n\r\n",
        "POST /ingest HTTP/1.1\r\nAuthorization: Basic s3cret\r\nContent-Length: 1\r\n\r\n",
        "POST /ingest HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
        "POST /ingest HTTP/1.1\r\nAuthorization: Bearer wrong\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1\r\n\r\n",
        "POST /ingest HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n",
        "POST /ingest HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 101\r\n\r\n",
        "POST /ingest HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "POST /ingest HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: x\r\n\r\n",
        "POST /ingest HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /ingest HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
        "POST /ingest HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1\r\nOrigin: https://a\r\n\r\n",
        "POST /ingest HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
        "POST /ingest HTTP/1.0\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1\r\n\r\n",
        "POST /ingest?x=1 HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1\r\n\r\n",
        "PUT /ingest HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1\r\n\r\n",
        "GET /healthz HTTP/1.1\r\n\r\n",
        "not http\r\n\r\n",
    ] {
        assert_eq!(next(other), Next::Hyper, "{other}");
    }
    let long_head = format!("POST /ingest HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
    assert_eq!(next(&long_head), Next::Hyper, "hyper refuses long heads");
}

#[test]
fn dates_are_http_dates() {
    let mut date = String::new();
    with_date(|text| date = String::from_utf8(text.to_vec()).unwrap());
    let parsed = httpdate::parse_http_date(&date).expect("an HTTP date");
    let age = SystemTime::now().duration_since(parsed).unwrap_or_default();
    assert!(age < Duration::from_secs(5), "{date}");
}
