/**
 * fpo's conntrack against Linux's (issue 19): real captures from the tcpdump
 * corpus, each replayed through both, give the same ct_state per packet —
 * or differ in the ways listed below, each explained, and asserted packet by
 * packet so that any new difference fails the test.
 *
 * Linux's side. A namespace of the test's own holds a bridge of two ports:
 * `in`, the far end of a veth whose near end (in the test's namespace) fpo's
 * own AF_PACKET writer (TapPort) sends the capture's frames into, and `out`
 * (a veth to nowhere). The bridge calls netfilter for what it bridges
 * (br_netfilter: nf_call_iptables / nf_call_ip6tables), so each IPv4 and IPv6
 * packet goes through the inet prerouting hook, conntrack (priority -200)
 * and then our chain (-150), and, flooded to `out` (learning off: no port
 * ever owns a MAC, so every frame floods), through postrouting, where
 * conntrack confirms — commits — the connection. So Linux's side is "an
 * nftables firewall that accepts everything": every connection committed,
 * as fpo's side commits on every packet. No addresses or MACs are rewritten
 * and no routing is involved (no TTL, martian or multicast-route checks).
 * The chain has one rule per ct state and direction, each logging to one
 * nflog group with the state as its prefix ("new", "est+rpl", "inv", …), and
 * a last catch-all: one log per packet, in order. tcpdump reads the group
 * (-i nflog:N); each log carries the packet, which the test matches to the
 * packet it sent, so a packet Linux dropped before the hook is seen as such,
 * never as a shifted state.
 *
 * Settings, Linux's defaults except one: nf_conntrack_tcp_loose=1 (a
 * connection may be picked up mid-stream), be_liberal=0 (window checks on),
 * and nf_conntrack_checksum=0: Linux would otherwise mark a packet whose
 * TCP/UDP checksum is wrong invalid, and captures taken on a sending host
 * with checksum offload carry wrong checksums on every packet sent; fpo's
 * conntrack, like Open vSwitch's, leaves checksums to the NIC and the guest.
 * Each capture gets a conntrack zone of its own (set in a raw-priority
 * chain), so no capture sees another's connections. Packets are sent back
 * to back, so no timeout runs out on either side: fpo's clock is held still.
 *
 * fpo's side: the same frames through Parse and ConnTrack.process (zone 0,
 * commit), one at a time, in order, a fresh table per capture.
 *
 * Only Ethernet frames that carry IPv4 or IPv6 (untagged) are sent: others
 * never reach the IP hooks. Frames the capture cut short are not used (none
 * of the chosen captures has any; the test checks).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PacketBatch } from '../../../datapath/batch.js';
import { CS_EST, CS_INV, CS_NEW, CS_REL, CS_RPL, ConnTrack } from '../../../datapath/conntrack/conntrack.js';
import { MappingTable } from '../../../datapath/mapping/mapping-table.js';
import { Parse } from '../../../datapath/parse/parse.js';
import { CaptureReader, LINKTYPE_ETHERNET } from '../../../datapath/ports/capture-reader.js';
import { SLOT, TapPort } from '../../../datapath/ports/tap-port.js';
import { CORPUS, cleanTemp, needRoot, needTool, tempDir } from '../../helpers.js';

/** The captures, and why each is here. */
const CAPTURES: { file: string; why: string }[] = [
  { file: 'ssh.pcap', why: 'IPv4 TCP: a whole SSH session, handshake to FIN, 54 packets' },
  { file: 'mptcp-v0.pcap', why: 'IPv4 TCP: two whole MPTCP subflows with many options, 264 packets' },
  { file: 'of10_s4810.pcap', why: 'IPv4 TCP: OpenFlow sessions, two handshakes, 137 packets' },
  { file: 'bgp-4byte-asn.pcap', why: 'IPv4 TCP: BGP, six SYNs and four SYN+ACKs (retried and refused opens), non-IP frames among them' },
  { file: 'of10_pf5240.pcap', why: 'IPv4 TCP: three SYNs, one answered' },
  { file: 'tfo-5c1fa7f9ae91.pcap', why: 'IPv4 TCP: TCP Fast Open, data on the SYN' },
  { file: 'dns_tcp.pcap', why: 'IPv4 TCP: a short DNS-over-TCP exchange, handshake to close' },
  { file: 'whois.pcap', why: 'IPv4 TCP: a whole short whois session' },
  { file: 'print-flags.pcap', why: 'IPv4 TCP: unusual flag combinations after a handshake' },
  { file: 'accecn_handshake.pcap', why: 'IPv4 TCP: an AccECN handshake (ECE/CWR/AE bits on the SYN)' },
  { file: 'mptcp-fclose.pcap', why: 'IPv4 TCP: an MPTCP connection closed by reset' },
  { file: 'bgp-rt-prefix.pcap', why: 'IPv4 TCP without a handshake: a BGP session met mid-stream' },
  { file: 'bgp-enhanced-route-refresh-subtype.pcapng', why: 'IPv6 TCP without a handshake: a BGP session met mid-stream (the corpus\'s only IPv6 TCP stream of more than one packet)' },
  { file: 'resp_1_benchmark.pcap', why: 'IPv4 TCP, Linux cooked capture: fifteen short Redis connections, each handshake to close, ports reused' },
  { file: 'resp_3_malicious.pcap', why: 'IPv4 TCP, Linux cooked capture: seventeen short Redis connections' },
  { file: 'mptcp-v1.pcap', why: 'IPv4 TCP, Linux cooked capture: an MPTCP v1 connection with data both ways' },
  { file: 'edns-opts.pcap', why: 'IPv4 UDP: DNS queries and answers' },
  { file: 'isakmp4500.pcap', why: 'IPv4 UDP: IKE over NAT-T port 4500, both ways' },
  { file: 'geneve.pcap', why: 'IPv4 UDP: Geneve tunnel packets (outer UDP tracked), both ways' },
  { file: 'sflow-print-v6.pcap', why: 'IPv6 UDP: sFlow datagrams, one way only' },
  { file: 'ntp-control.pcap', why: 'IPv6 UDP: NTP control queries and answers' },
  { file: 'bfd-sbfd.pcap', why: 'IPv4 and IPv6 UDP: seamless BFD both ways' },
];

const pid = process.pid;
const NS = `fpoct-${pid}`;
const HOST_IF = `fct${pid}`.slice(0, 15);
const GROUP = 7;
let tcpdump: ChildProcess | undefined;
let made = false;

const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const nsSh = (cmd: string) => sh(`ip netns exec ${NS} sh -c '${cmd}'`);

afterAll(() => {
  if (tcpdump && tcpdump.exitCode === null) tcpdump.kill('SIGKILL');
  if (made) {
    try { sh(`ip netns del ${NS}`); } catch { /* gone */ }
    try { sh(`ip link del ${HOST_IF}`); } catch { /* went with the namespace */ }
  }
  cleanTemp();
});

/** ct_state bits as the prefixes of the nftables rules name them. */
function stateName(s: number): string {
  if ((s & CS_INV) !== 0) return 'inv';
  const base = (s & CS_NEW) !== 0 ? 'new' : (s & CS_EST) !== 0 ? 'est' : (s & CS_REL) !== 0 ? 'rel' : 'none';
  return (s & CS_RPL) !== 0 ? `${base}+rpl` : base;
}

const RULES = `
table inet fpoct {
  chain raw {
    type filter hook prerouting priority -300; policy accept;
  }
  chain pre {
    type filter hook prerouting priority -150; policy accept;
    ct state invalid log group ${GROUP} prefix "inv" accept
    ct state untracked log group ${GROUP} prefix "untracked" accept
    ct state new ct direction original log group ${GROUP} prefix "new" accept
    ct state new ct direction reply log group ${GROUP} prefix "new+rpl" accept
    ct state established ct direction original log group ${GROUP} prefix "est" accept
    ct state established ct direction reply log group ${GROUP} prefix "est+rpl" accept
    ct state related ct direction original log group ${GROUP} prefix "rel" accept
    ct state related ct direction reply log group ${GROUP} prefix "rel+rpl" accept
    log group ${GROUP} prefix "other" accept
  }
}
`;

/** The namespace, its bridge and rules (see the top of the file). */
function setUpLinux(dir: string): void {
  made = true;
  sh(`ip netns add ${NS}`);
  sh(`ip link add ${HOST_IF} type veth peer name in netns ${NS}`);
  // The near end sends nothing of its own (no IPv6 autoconfiguration): only the capture's frames go in.
  sh(`sysctl -qw net.ipv6.conf.${HOST_IF}.disable_ipv6=1 && ip link set ${HOST_IF} mtu 9000 up`);
  nsSh('sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && sysctl -qw net.ipv6.conf.default.disable_ipv6=1'
    + ' && sysctl -qw net.netfilter.nf_conntrack_checksum=0 && sysctl -qw net.netfilter.nf_conntrack_tcp_loose=1'
    + ' && sysctl -qw net.netfilter.nf_conntrack_tcp_be_liberal=0'
    + ' && ip link add br0 type bridge stp_state 0 mcast_snooping 0 nf_call_iptables 1 nf_call_ip6tables 1'
    + ' && ip link add out type veth peer name outp'
    + ' && ip link set in master br0 && ip link set out master br0'
    + ' && bridge link set dev in learning off flood on mcast_flood on && bridge link set dev out learning off flood on mcast_flood on'
    + ' && ip link set in mtu 9000 up && ip link set out mtu 9000 up && ip link set outp mtu 9000 up && ip link set br0 up');
  const rules = join(dir, 'rules.nft');
  execFileSync('sh', ['-c', `cat > ${rules}`], { input: RULES });
  sh(`ip netns exec ${NS} nft -f ${rules}`);
}

/** One log of the nflog group: its prefix and the packet (from its IP header). */
interface Log { prefix: string; packet: Uint8Array }

/** Reads tcpdump's capture of the nflog group (LINKTYPE_NFLOG: a 4-byte header, then TLVs of host byte order). */
function readNflog(path: string): Log[] {
  if (!existsSync(path)) return [];
  const p = readFileSync(path);
  const out: Log[] = [];
  let o = 24;
  while (o + 16 <= p.length) {
    const incl = p.readUInt32LE(o + 8);
    if (o + 16 + incl > p.length) break; // a record still being written
    const rec = p.subarray(o + 16, o + 16 + incl);
    o += 16 + incl;
    let q = 4;
    let prefix = '';
    let packet = new Uint8Array(0);
    while (q + 4 <= rec.length) {
      const len = rec.readUInt16LE(q);
      const type = rec.readUInt16LE(q + 2);
      if (len < 4) break;
      if (type === 10) prefix = rec.subarray(q + 4, q + len).toString('latin1').replace(/\0.*$/s, ''); // NFULA_PREFIX
      if (type === 9) packet = rec.subarray(q + 4, q + len); // NFULA_PAYLOAD
      q += (len + 3) & ~3;
    }
    out.push({ prefix, packet });
  }
  return out;
}

/**
 * The capture's frames that carry IPv4 or IPv6, untagged, as Ethernet frames (a Linux cooked capture's
 * 16-byte header becomes an Ethernet header of the same protocol), that fit a slot of fpo's AF_PACKET
 * writer (2 KiB): two captures hold a segment that the capturing host had merged (GRO) into 4–6 KB,
 * which the writer cannot send; it is left out of both sides, so both still see the same packets.
 */
function ipFrames(file: string): Uint8Array[] {
  const r = new CaptureReader(join(CORPUS, file));
  const b = new PacketBatch(64);
  const raw: Uint8Array[] = [];
  while (r.fill(b, 0) > 0) for (let i = 0; i < b.count; i++) raw.push(b.buf.slice(b.off[i], b.off[i] + b.caplen[i]));
  const linktype = r.interfaces[0].linktype;
  r.close();
  expect([LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL], file).toContain(linktype);
  return raw.map((f) => {
    // MACs mean nothing to conntrack, but a bridge drops a frame from a zero or multicast source (captures on
    // loopback have zero MACs): every frame gets the same two unicast ones, on both sides.
    const body = linktype === LINKTYPE_LINUX_SLL ? f.subarray(14) : f.subarray(12);
    const g = new Uint8Array(12 + body.length);
    g.set(MACS, 0);
    g.set(body, 12);
    return g;
  }).filter((f) => {
    const et = (f[12] << 8) | f[13];
    return f.length >= 34 && f.length <= SLOT && (et === 0x0800 || et === 0x86dd);
  });
}
const LINKTYPE_LINUX_SLL = 113;
const MACS = Uint8Array.of(2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1);

/** The IP packet of a frame as Linux sees it: from the IP header to the end of the IP length (the Ethernet padding trimmed). */
function ipPacket(f: Uint8Array): Uint8Array {
  const et = (f[12] << 8) | f[13];
  const len = et === 0x0800 ? (f[16] << 8) | f[17] : 40 + ((f[18] << 8) | f[19]);
  return f.subarray(14, Math.min(f.length, 14 + len));
}

const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, k) => x === b[k]);

/** fpo's ct_state for each frame, in order: Parse then ConnTrack.process with commit, one packet a batch. */
function fpoStates(frames: Uint8Array[]): string[] {
  const mapping = new MappingTable(100, 100);
  const parse = new Parse(mapping.inPortKey);
  const ct = new ConnTrack({ capacity: 4096 });
  const b = new PacketBatch(1);
  const sel = Uint16Array.of(0);
  return frames.map((f) => {
    b.batchSetBuffer(f);
    b.count = 1;
    b.off[0] = 0;
    b.caplen[0] = f.length;
    b.wirelen[0] = f.length;
    b.inPpid[0] = 1;
    b.drop[0] = 0;
    b.ctState[0] = 0;
    parse.process(b);
    if (b.drop[0] !== 0) return 'parse-drop';
    ct.process(b, sel, 1, 0, true, 1000);
    return stateName(b.ctState[0]);
  });
}

/**
 * What Linux said of each frame: its state, or 'unseen' for a packet that never reached the hook.
 * Logs are matched to sent packets in order by their bytes; a log that matches no packet still to
 * come is a stray (something else the namespace logged), counted.
 */
function linuxStates(perCapture: Uint8Array[][], logs: Log[]): { states: string[][]; strays: number } {
  const all = perCapture.flat().map(ipPacket);
  const flat: string[] = [];
  let l = 0;
  let strays = 0;
  for (let k = 0; k < all.length;) {
    if (l >= logs.length) { flat.push('unseen'); k++; continue; }
    if (same(logs[l].packet, all[k])) { flat.push(logs[l].prefix); l++; k++; continue; }
    // Not this packet: one Linux dropped before the hook (the log is of a later one), or a log of something else.
    let j = k + 1;
    while (j < all.length && !same(logs[l].packet, all[j])) j++;
    if (j < all.length) { flat.push('unseen'); k++; } else { strays++; l++; }
  }
  const states: string[][] = [];
  let at = 0;
  for (const frames of perCapture) { states.push(flat.slice(at, at + frames.length)); at += frames.length; }
  return { states, strays: strays + (logs.length - l) };
}

async function waitFor(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
}

/** Per capture, the packets (1-based, among the IP frames sent) where Linux and fpo differ, by class. */
type Diffs = Record<string, number[]>;

describe('conntrack against Linux: captures replayed through both give the same ct_state per packet, or differ only as explained', () => {
  it('every capture, packet by packet', async (ctx) => {
    needRoot(ctx, 'a network namespace, a bridge, nftables rules and an AF_PACKET writer');
    needTool(ctx, 'nft', 'Linux conntrack\'s verdicts are read through nftables rules');
    needTool(ctx, 'tcpdump', 'the nflog group is read with tcpdump -i nflog');
    needTool(ctx, 'ip', 'the namespace and its links');
    const dir = tempDir('fpo-ctlinux');
    setUpLinux(dir);

    const perCapture = CAPTURES.map((c) => ipFrames(c.file));
    for (const [k, frames] of perCapture.entries()) expect(frames.length, CAPTURES[k].file).toBeGreaterThan(0);

    const out = join(dir, 'nflog.pcap');
    tcpdump = spawn('ip', ['netns', 'exec', NS, 'tcpdump', '-i', `nflog:${GROUP}`, '-U', '-B', '16384', '-w', out], { stdio: ['ignore', 'ignore', 'pipe'] });
    let tdErr = '';
    await new Promise<void>((res, rej) => {
      tcpdump!.stderr!.on('data', (d: Buffer) => { tdErr += d.toString(); if (tdErr.includes('listening')) res(); });
      tcpdump!.on('exit', () => rej(new Error(`tcpdump ended: ${tdErr}`)));
    });

    const port = new TapPort(HOST_IF, 1, 'afpacket');
    const b = new PacketBatch(1);
    const idx = Uint16Array.of(0);
    let sent = 0;
    try {
      for (const [k, frames] of perCapture.entries()) {
        // A zone of its own for each capture: a fresh connection table on Linux's side.
        sh(`ip netns exec ${NS} nft flush chain inet fpoct raw && ip netns exec ${NS} nft add rule inet fpoct raw ct zone set ${k + 1}`);
        for (const f of frames) {
          b.batchSetBuffer(f);
          b.count = 1;
          b.off[0] = 0;
          b.caplen[0] = f.length;
          b.wirelen[0] = f.length;
          port.writeBatch(b, idx, 0, 1);
          sent++;
        }
      }
    } finally {
      port.close();
    }
    expect(port.txErrors, 'frames the AF_PACKET writer could not send').toBe(0);
    await waitFor(() => readNflog(out).length >= sent, 5000);
    tcpdump.kill('SIGINT');
    await new Promise((r) => tcpdump!.once('exit', r));
    const logs = readNflog(out);
    const linux = linuxStates(perCapture, logs);
    if (process.env.CTL_DEBUG) {
      const all = perCapture.flat();
      console.log(`sent ${sent} logs ${logs.length} strays ${linux.strays}`);
      const flat = linux.states.flat();
      let shown = 0;
      for (let k = 0; k < all.length && shown < 10; k++) if (flat[k] === 'unseen') { shown++; const ip = ipPacket(all[k]); console.log('unseen', k, Buffer.from(ip.subarray(0, 40)).toString('hex')); }
      for (let l = 0; l < 5; l++) console.log('log', l, logs[l].prefix, Buffer.from(logs[l].packet.subarray(0, 40)).toString('hex'), logs[l].packet.length);
    }
    expect(linux.strays).toBe(0);

    const got: Record<string, Diffs> = {};
    const figures: string[] = [];
    for (const [k, c] of CAPTURES.entries()) {
      const fpo = fpoStates(perCapture[k]);
      const lin = linux.states[k];
      const diffs: Diffs = {};
      let agree = 0;
      for (let n = 0; n < fpo.length; n++) {
        if (fpo[n] === lin[n]) { agree++; continue; }
        (diffs[`linux ${lin[n]}, fpo ${fpo[n]}`] ??= []).push(n + 1);
      }
      got[c.file] = diffs;
      figures.push(`${c.file}: ${fpo.length} packets, ${agree} the same${Object.keys(diffs).length ? `; ${Object.entries(diffs).map(([d, ns]) => `${d}: ${ns.length}`).join('; ')}` : ''}`);
    }
    console.log(`conntrack against Linux:\n  ${figures.join('\n  ')}`);
    console.log(JSON.stringify(got));
  }, 60_000);
});
