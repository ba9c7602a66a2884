"""Reads a mailpush EventSource stream with a real Python SSE client, unmodified, and prints
each event it yields as one JSON line with the time it arrived (tests/python_clients.rs).

    python3 sse_client.py httpx-sse|sseclient-py URL TOKEN COUNT

A line {"ready": true} says the response head arrived; then one line per event, COUNT of them.
"""
import json
import sys
import time


def report(event, data, event_id, retry):
    line = {"event": event, "data": data, "id": event_id, "retry": retry, "at": time.time()}
    print(json.dumps(line), flush=True)


def with_httpx_sse(url, headers, count):
    import httpx
    from httpx_sse import connect_sse

    with httpx.Client(timeout=None) as http:
        with connect_sse(http, "GET", url, headers=headers) as source:
            source.response.raise_for_status()
            print(json.dumps({"ready": True}), flush=True)
            for seen, sse in enumerate(source.iter_sse(), start=1):
                report(sse.event, sse.data, sse.id, sse.retry)
                if seen == count:
                    return


def with_sseclient_py(url, headers, count):
    import requests
    import sseclient

    response = requests.get(url, headers=headers, stream=True, timeout=None)
    response.raise_for_status()
    print(json.dumps({"ready": True}), flush=True)
    client = sseclient.SSEClient(response)
    for seen, event in enumerate(client.events(), start=1):
        report(event.event, event.data, event.id, event.retry)
        if seen == count:
            return


def main():
    client, url, token, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if client == "httpx-sse":
        with_httpx_sse(url, headers, count)
    elif client == "sseclient-py":
        with_sseclient_py(url, headers, count)
    else:
        sys.exit(f"unknown client {client}")


if __name__ == "__main__":
    main()
