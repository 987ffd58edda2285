/**
 * The scale benchmark's peer: one process that answers every BFD session
 * that reaches it (a session of its own per remote discriminator), on
 * ADDRESS:PORT, sending back to REPLY_PORT. Prints "ready".
 *
 *   node dist/bench/control/bfd-peer.js ADDRESS PORT REPLY_PORT TX_MS DETECT_MULT
 */
import { createSocket } from 'node:dgram';
import { decode } from '../../control/bfd/packet.js';
import { Session } from '../../control/bfd/session.js';
import { TimerHeap } from '../../control/bfd/timers.js';

const [address, port, replyPort, txMs, mult] = process.argv.slice(2);
const timers = new TimerHeap();
const sock = createSocket({ type: 'udp4' });
const byRemote = new Map<number, Session>();
let nextDisc = 1;
sock.on('message', (msg, rinfo) => {
  const p = decode(msg);
  if (typeof p === 'string') return;
  let s = byRemote.get(p.myDisc);
  if (!s) {
    s = new Session(nextDisc++, { txUs: Number(txMs) * 1000, rxUs: Number(txMs) * 1000, detectMult: Number(mult) }, timers, {
      send: (b) => sock.send(Buffer.from(b), Number(replyPort), rinfo.address),
      change: () => undefined,
    });
    byRemote.set(p.myDisc, s);
    s.start();
  }
  s.receive(p);
});
sock.bind(Number(port), address, () => {
  sock.setTTL(255); // single hop: the receiver checks it (RFC 5881 §5)
  process.stdout.write('ready\n');
});
process.on('SIGTERM', () => { timers.stop(); sock.close(); process.exit(0); });
