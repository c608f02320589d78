"""A demo of target-aware selection on text every Python has: pick the standard library's
networking documentation and code out of all of its module sources and docstrings with DSIR,
given a few dozen hand-written lines about networking as the target."""

from __future__ import annotations

import ast
import gzip
import json
import sysconfig
from pathlib import Path
from typing import Any

SKIPPED_FOLDERS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}

LABEL_FIELD = "topic"
TARGET_TOPIC = "networking"
NETWORKING_PACKAGES = {"email", "http", "urllib", "xmlrpc", "wsgiref"}
NETWORKING_MODULES = {
    "socket", "ssl", "select", "selectors", "socketserver", "ipaddress",
    "smtplib", "smtpd", "ftplib", "poplib", "imaplib", "nntplib", "telnetlib", "mailbox",
    "asynchat", "asyncore", "cgi", "mimetypes", "webbrowser",
    "asyncio.base_events", "asyncio.selector_events", "asyncio.proactor_events",
    "asyncio.sslproto", "asyncio.streams", "asyncio.transports", "asyncio.protocols",
    "asyncio.trsock",
}  # fmt: skip

# The target: hand-written, not taken from the pool. Prose and code, as the pool has both.
TARGET_SENTENCES = [
    "A client opens a TCP socket, connects to the server's host and port, and sends a request.",
    "The server binds a listening socket to an address, accepts each connection and reads the "
    "bytes the client sent.",
    "An HTTP request names a method such as GET or POST, a URL path and headers; the response "
    "carries a status code and a body.",
    "Parse the URL into its scheme, network location, path, query string and fragment before "
    "you open the connection.",
    "Quote special characters in the query parameters and encode the form data before posting "
    "it to the web server.",
    "The mail client connects to the SMTP server, says hello, logs in and sends the message to "
    "each recipient address.",
    "An email message has headers such as From, To, Subject and Date, and a body that may be a "
    "MIME multipart with attachments.",
    "Wrap the socket in an SSL context so that the TLS handshake checks the server's "
    "certificate and host name.",
    "A timeout on the connection keeps the client from waiting forever when the remote host "
    "does not answer.",
    "Fetch the messages from the mailbox over IMAP or POP3, then decode each header and the "
    "message payload.",
    "The proxy forwards the HTTP request to the origin server and relays the response back to "
    "the browser.",
    "Cookies travel in the Set-Cookie response header and return to the server in the Cookie "
    "request header.",
    "An IPv4 or IPv6 address and a port number identify one end of a network connection.",
    "The protocol reads a line from the stream, handles the command and writes a reply before "
    "the transport closes.",
    "Resolve the host name with DNS to get the address, then open a stream to the remote endpoint.",
    "Upload the file to the FTP server in binary mode, then list the remote directory.",
    "The WSGI application receives the request environment and returns the response headers "
    "and body to the web server.",
    "A remote procedure call sends the method name and its arguments as XML over HTTP and "
    "parses the result.",
    "The event loop waits on many sockets at once with select and calls the protocol when data "
    "arrives.",
    "Redirect responses carry a Location header; the client follows it to the new URL, at most "
    "a few times.",
    "The server closes an idle keep-alive connection; the client reconnects and sends the "
    "request again.",
    "Authenticate with a user name and password over an encrypted channel, never in plain text "
    "on the wire.",
    "Return the response status, the reason phrase and the headers the server sent.",
    "Send the request line and the headers, then the body, over the open connection.",
    "Raise an error when the server answers with a status code that reports a failure.",
    "Read the reply from the server one line at a time until the terminating line.",
    "Encode the header value when it contains characters outside ASCII, and fold long header "
    "lines.",
    "The client and the server agree on a protocol version and the server's address before "
    "any data moves.",
    "Create a connection to the mail server and return the welcome message it sends.",
    "Split the network address into host and port; use the default port of the scheme when "
    "none is given.",
    "A handler class serves each request from the client in its own thread or process.",
    "Close the socket and release the connection when the transfer is complete or the peer "
    "hangs up.",
    "Decode the message body with the charset from its Content-Type header.",
    "Join a relative URL with the base URL of the document to get the absolute address.",
    "Verify the peer certificate against the trusted certificate authorities and reject an "
    "expired certificate.",
    "Send the command to the server and return the server's response code and message.",
    "The transport buffers outgoing data and pauses the protocol when the buffer is full.",
    "Open the URL, send the request with the given data and headers, and return a file-like "
    "response object.",
    "A multipart message holds several parts, each with its own content type and transfer "
    "encoding.",
    "Log in to the server with the user name and password, then select the mailbox to read.",
]
TARGET_CODE = [
    """sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.connect((host, port))
sock.sendall(request)
reply = sock.recv(4096)""",
    """server = socketserver.TCPServer((address, port), Handler)
server.serve_forever()""",
    """context = ssl.create_default_context()
with context.wrap_socket(sock, server_hostname=host) as tls:
    tls.sendall(data)""",
    """conn = http.client.HTTPSConnection(host, timeout=10)
conn.request('GET', url, headers=headers)
response = conn.getresponse()
body = response.read()""",
    """with urllib.request.urlopen(url) as response:
    status, headers, body = response.status, response.headers, response.read()""",
    """parts = urllib.parse.urlsplit(url)
query = urllib.parse.urlencode(params)""",
    """msg = email.message.EmailMessage()
msg['From'], msg['To'], msg['Subject'] = sender, recipient, subject
with smtplib.SMTP(host, port) as smtp:
    smtp.starttls()
    smtp.login(user, password)
    smtp.send_message(msg)""",
    """def handle(self):
    line = self.rfile.readline()
    self.wfile.write(reply)""",
    """reader, writer = await asyncio.open_connection(host, port)
writer.write(request)
line = await reader.readline()
writer.close()""",
    """def do_GET(self):
    self.send_response(200)
    self.send_header('Content-Type', 'text/html')
    self.end_headers()""",
    """host, port = address
sock = socket.create_connection((host, port), timeout)
sock.settimeout(timeout)
data = sock.recv(bufsize)
sock.close()""",
    """headers = {'Host': host, 'User-Agent': agent, 'Content-Length': str(len(body))}
request = urllib.request.Request(url, data=body, headers=headers, method='POST')""",
    """def connect(self, host='localhost', port=0, timeout=None):
    self.sock = socket.create_connection((host, port), timeout)
    return self.getreply()""",
    """def sendmail(self, from_addr, to_addrs, msg):
    self.mail(from_addr)
    for addr in to_addrs:
        self.rcpt(addr)
    self.data(msg)""",
    """except (ConnectionError, socket.timeout, ssl.SSLError) as exc:
    raise URLError(exc)""",
    """msg.add_header('Content-Disposition', 'attachment', filename=name)
msg.set_payload(data)
encoders.encode_base64(msg)""",
]

# A bit fewer than the networking documents in the pool (about 120 to 140, by Python version),
# so a selection that finds them can be made of little else.
BUDGET_DOCS = 100


def stdlib_modules() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        path
        for path in root.rglob("*.py")
        if not SKIPPED_FOLDERS.intersection(path.relative_to(root).parts[:-1])
    )


def topic(module: str) -> str:
    """`networking` for the modules of the standard library's internet protocols, else `other`."""
    package = module.split(".")[0]
    if package in NETWORKING_PACKAGES or module in NETWORKING_MODULES:
        return TARGET_TOPIC
    return "other"


def documentation(source: str) -> str:
    """The module's docstring followed by those of its classes and functions; empty when the
    module has no docstring of its own."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    docstrings = [ast.get_docstring(tree)]
    if not docstrings[0]:
        return ""
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    docstrings += [ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, definitions)]
    return "\n\n".join(text for text in docstrings if text)


def _records(path: Path, root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    source = path.read_text(encoding="utf-8", errors="replace")
    fields = {"module": module, "package": module.split(".")[0], LABEL_FIELD: topic(module)}
    source_record = {"text": source, "kind": "source", **fields}
    doc_record = {"text": documentation(source), "kind": "docstring", **fields}
    return source_record, doc_record


def write_demo_corpus(folder: Path) -> list[Path]:
    """Write the stdlib's module sources and docstrings as three gzip JSON Lines shards.

    Modules without a docstring give an empty text on purpose: the run quarantines them.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    folder.mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[dict[str, Any]]] = {
        "docstrings": [],
        "sources-a-m": [],
        "sources-n-z": [],
    }
    for path in stdlib_modules():
        source_record, doc_record = _records(path, root)
        half = "sources-a-m" if source_record["module"][:1].lower() <= "m" else "sources-n-z"
        shards[half].append(source_record)
        shards["docstrings"].append(doc_record)
    written = []
    for name, records in shards.items():
        target = folder / f"{name}.jsonl.gz"
        with gzip.open(target, "wt", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        written.append(target)
    return written


def write_demo_target(path: Path) -> Path:
    """Write the hand-written networking target as JSON Lines, one example per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": text}) for text in TARGET_SENTENCES + TARGET_CODE]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def demo_config(output: Path) -> dict[str, Any]:
    return {
        "input": {
            "paths": [str(output / "demo-corpus")],
            "group_field": "kind",
            "label_field": LABEL_FIELD,
            "max_chars": 100_000,
        },
        "target": {"paths": [str(output / "demo-target" / "networking.jsonl")]},
        "output": {"path": str(output)},
        "select": {
            "method": "dsir",
            "budget": {"docs": BUDGET_DOCS},
            # A target of a few dozen lines: its bigrams are too sparse to estimate, so
            # unigrams; weights per n-gram, else long sources and short docstrings win on
            # length alone; and the top-k, as Gumbel noise would drown per-n-gram differences.
            "dsir": {"ngrams": 1, "length_normalize": True, "sampling": "topk"},
        },
        "stages": {"stats": {}},
        "seed": 0,
    }


def prepare(output: Path) -> dict[str, Any]:
    """Write the demo's corpus and target under `output`; return its configuration."""
    write_demo_corpus(output / "demo-corpus")
    write_demo_target(output / "demo-target" / "networking.jsonl")
    return demo_config(output)
