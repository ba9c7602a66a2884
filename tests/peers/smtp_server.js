// A real SMTP server for tests/smtp_real.rs: nodemailer's smtp-server from npm (found through
// NODE_PATH), on an ephemeral port of 127.0.0.1. It offers PIPELINING, as relays do, and
// refuses any recipient whose address starts with "refused" with a 550.
//
// With SMTP_TLS_KEY and SMTP_TLS_CERT (PEM files) it speaks TLS: from the first byte if
// SMTP_TLS is "implicit", else through STARTTLS, which it then offers.
//
// It prints JSON lines: {"listening": PORT} once, then one per message it took:
// {"from", "to", "data", "groups", "secure"}, where "groups" counts the pipelined groups
// (MAIL FROM, RCPT TO..., DATA in one read) its connection has sent so far (on plain
// connections) and "secure" says whether the message came over TLS.
'use strict';
const fs = require('fs');
const { SMTPServer } = require('smtp-server');

const tls = process.env.SMTP_TLS_KEY
  ? {
      key: fs.readFileSync(process.env.SMTP_TLS_KEY),
      cert: fs.readFileSync(process.env.SMTP_TLS_CERT),
      secure: process.env.SMTP_TLS === 'implicit',
    }
  : { disabledCommands: ['STARTTLS'] };

const GROUP = /MAIL FROM:[^\r\n]*\r\n(RCPT TO:[^\r\n]*\r\n)+DATA\r\n/i;
const groups = new Map(); // remote port -> pipelined groups seen

const server = new SMTPServer({
  ...tls,
  authOptional: true,
  logger: false,
  onRcptTo(address, session, callback) {
    if (address.address.startsWith('refused')) {
      const error = new Error(`<${address.address}>: no such user`);
      error.responseCode = 550;
      return callback(error);
    }
    callback();
  },
  onData(stream, session, callback) {
    const chunks = [];
    stream.on('data', chunk => chunks.push(chunk));
    stream.on('end', () => {
      process.stdout.write(JSON.stringify({
        from: session.envelope.mailFrom.address,
        to: session.envelope.rcptTo.map(rcpt => rcpt.address),
        data: Buffer.concat(chunks).toString('utf8'),
        groups: groups.get(session.remotePort) || 0,
        secure: session.secure,
      }) + '\n');
      callback(null, 'Queued');
    });
  },
});

// A second reader of each connection's bytes, beside the server's own.
server.server.on('connection', socket => {
  const port = socket.remotePort;
  groups.set(port, 0);
  socket.on('data', chunk => {
    if (GROUP.test(chunk.toString('latin1'))) groups.set(port, groups.get(port) + 1);
  });
  socket.on('close', () => groups.delete(port));
});

server.on('error', error => process.stderr.write(`smtp-server: ${error.message}\n`));
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ listening: server.server.address().port }) + '\n');
});
