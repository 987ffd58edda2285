/**
 * Capture filters (datapath/ports/bpf.ts): libpcap's compiler, our
 * interpreter. The interpreter keeps exactly the frames tcpdump keeps with
 * the same expression, on the fixtures' captures; any expression compiles
 * to a checked program or is refused with libpcap's words.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { FpoError } from '../../../datapath/errors.js';
import { PKTTYPE_HOST, PKTTYPE_OUTGOING, bpfMatch, checkProgram, compileFilter } from '../../../datapath/ports/bpf.js';
import { FIXTURES, cleanTemp, needTool, tempDir } from '../../helpers.js';

afterAll(cleanTemp);

/** The records of a classic little-endian pcap: [offset of data, caplen, wirelen]. */
function records(bytes: Buffer): [number, number, number][] {
  const out: [number, number, number][] = [];
  for (let at = 24; at + 16 <= bytes.length;) {
    const cl = bytes.readUInt32LE(at + 8);
    out.push([at + 16, cl, bytes.readUInt32LE(at + 12)]);
    at += 16 + cl;
  }
  return out;
}

const FILTERS = [
  'udp', 'tcp', 'arp', 'ip6', 'icmp', 'udp port 161', 'tcp dst port 80 or udp src port 7000', 'vlan 20', 'vlan and ip',
  'ether dst 02:00:00:00:00:03', 'ether broadcast', 'ether multicast', 'net 10.0.0.0/24', 'host 10.0.0.2 and not udp',
  'ip[8] < 64', 'len > 100', 'greater 70', 'less 61', 'ip[2:2] > 48', 'udp[8:4] = 0', 'tcp[tcpflags] & tcp-syn != 0',
  'ip proto 17 and ip[6:2] & 0x1fff = 0', 'ether proto 0x86dd', 'portrange 6000-7000', 'geneve', 'udp port 4789 and udp[8] & 0x08 = 8',
];

describe('capture filters', () => {
  it('keep exactly the frames tcpdump keeps, on the fixtures\' captures', (ctx) => {
    needTool(ctx, 'tcpdump', 'the filters are checked against tcpdump\'s');
    const dir = tempDir('bpf');
    let compared = 0;
    for (const file of ['demo.pcap', 'parse.pcap', 'two-hosts.pcap']) {
      const path = join(FIXTURES, file);
      const bytes = readFileSync(path);
      const recs = records(bytes);
      for (const f of FILTERS) {
        const out = join(dir, 'out.pcap');
        execFileSync('tcpdump', ['-r', path, '-w', out, f], { stdio: 'ignore' });
        const want = records(readFileSync(out)).length;
        const prog = compileFilter(f)!;
        const kept = recs.filter(([o, cl, wl]) => bpfMatch(prog, bytes, o, cl, wl, PKTTYPE_HOST));
        // tcpdump wrote the kept frames in order: the same bytes as ours.
        const theirs = readFileSync(out);
        const theirRecs = records(theirs);
        expect(kept.length, `${file}: ${f}`).toBe(want);
        kept.forEach(([o, cl], i) => {
          const [to, tcl] = theirRecs[i];
          expect(bytes.subarray(o, o + cl).equals(theirs.subarray(to, to + tcl)), `${file}: ${f}: frame ${i}`).toBe(true);
        });
        compared++;
      }
    }
    expect(compared).toBe(3 * FILTERS.length);
  });

  it('inbound and outbound read the direction the caller gives', () => {
    const frame = Buffer.alloc(60);
    const inbound = compileFilter('inbound')!;
    const outbound = compileFilter('outbound')!;
    expect(bpfMatch(inbound, frame, 0, 60, 60, PKTTYPE_HOST)).toBe(true);
    expect(bpfMatch(inbound, frame, 0, 60, 60, PKTTYPE_OUTGOING)).toBe(false);
    expect(bpfMatch(outbound, frame, 0, 60, 60, PKTTYPE_OUTGOING)).toBe(true);
  });

  it('a load past the captured bytes rejects the frame (a cut frame, a runt)', () => {
    const prog = compileFilter('udp')!;
    const frame = Buffer.alloc(60);
    frame.writeUInt16BE(0x0800, 12);
    frame[14] = 0x45;
    frame[23] = 17;
    expect(bpfMatch(prog, frame, 0, 60, 60, 0)).toBe(true);
    expect(bpfMatch(prog, frame, 0, 23, 60, 0)).toBe(false);
    expect(bpfMatch(prog, frame, 0, 0, 0, 0)).toBe(false);
  });

  it('an empty filter is every frame; a bad one is refused with libpcap\'s words', () => {
    expect(compileFilter('')).toBeNull();
    expect(compileFilter('   ')).toBeNull();
    expect(() => compileFilter('udp and and')).toThrow("libpcap: can't parse filter expression: syntax error");
    expect(() => compileFilter('port 99999')).toThrow('libpcap: illegal port number 99999 > 65535');
    expect(() => compileFilter('udp\u0000 or tcp')).toThrow('expected no NUL, newline or other control character');
    expect(() => compileFilter('x'.repeat(5000))).toThrow('expected at most 4096 characters');
  });

  it('programs that could loop or read outside scratch memory are refused at load', () => {
    const p = (...ins: number[][]) => Int32Array.from(ins.flat());
    expect(() => checkProgram(p([0x05, 0, 0, 0xffffffff]))).toThrow('jumps past');
    expect(() => checkProgram(p([0x15, 5, 0, 1], [0x06, 0, 0, 0]))).toThrow('jumps past');
    expect(() => checkProgram(p([0x60, 0, 0, 16], [0x06, 0, 0, 0]))).toThrow('scratch word 16');
    expect(() => checkProgram(p([0x00, 0, 0, 1]))).toThrow('does not end with a return');
    expect(() => checkProgram(new Int32Array(0))).toThrow('0 instructions');
  });

  it('fuzz: any text compiles to a checked program or is refused as FPO_ERR_BAD_FILTER', () => {
    const words = fc.constantFrom('udp', 'tcp', 'and', 'or', 'not', '(', ')', 'port', '53', 'host', '10.0.0.1', 'ether', 'src', 'dst', 'vlan', '20', 'ip[0]', '&', '=', '0x45', 'len', '>', 'ip6', 'inbound', '[', ']', '-', '!', 'proto');
    const text = fc.oneof(fc.array(words, { maxLength: 12 }).map((w) => w.join(' ')), fc.string({ maxLength: 60 }));
    const frame = Buffer.alloc(128, 0x45);
    fc.assert(fc.property(text, (t) => {
      let prog;
      try {
        prog = compileFilter(t);
      } catch (e) {
        expect(e).toBeInstanceOf(FpoError);
        expect((e as FpoError).code).toBe('FPO_ERR_BAD_FILTER');
        return;
      }
      if (prog === null) return;
      checkProgram(prog);
      expect(typeof bpfMatch(prog, frame, 0, 128, 128, 0)).toBe('boolean');
    }), { numRuns: 400 });
  });
});
