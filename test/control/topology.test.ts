import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import fc from 'fast-check';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { replay, replayHosts } from '../../control/replay.js';
import { loadHosts, loadTopology, topologyFrom } from '../../control/topology.js';
import { FpoError } from '../../datapath/errors.js';
import { FIXTURES, ROOT, cleanTemp, runCli, tempDir } from '../helpers.js';

afterAll(cleanTemp);

const base = () => JSON.parse(readFileSync(join(FIXTURES, 'topology.json'), 'utf8'));

function err(mutate: (t: any) => void): string {
  const t = base();
  mutate(t);
  try {
    topologyFrom(t, 'topo.json');
  } catch (e) {
    expect(e).toBeInstanceOf(FpoError);
    expect((e as FpoError).code).toBe('FPO_ERR_BAD_TOPOLOGY');
    return (e as Error).message;
  }
  throw new Error('expected the topology to be refused');
}

describe('topology', () => {
  it('loads the bundled topology and gives interfaces, then uplinks, VPIDs 1, 2, …', () => {
    const t = loadTopology(join(FIXTURES, 'topology.json'));
    expect(t.interfaces.map((i) => [i.name, i.vpid])).toEqual([['vm1-eth0', 1], ['vm2-eth0', 2], ['vm3-eth0', 3], ['vm4-eth0', 4], ['vm5-eth0', 5]]);
    expect(t.ports.find((p) => p.name === 'uplink0')!.vpid).toBe(6);
    expect(t.inputPort).toBe('uplink0');
  });

  it('VPIDs follow the file\'s order of nodes and interfaces, then uplinks: reordered nodes give the predicted VPIDs', () => {
    const file = JSON.parse(readFileSync(join(FIXTURES, 'topology.json'), 'utf8'));
    const names = (f: any): string[] => f.nodes.flatMap((n: any) => n.interfaces.map((i: any) => i.name));
    file.nodes.reverse();
    const want = names(file).map((n, i) => [n, i + 1]);
    expect(want).toHaveLength(5);
    expect(want[0]).toEqual(['vm5-eth0', 1]);
    const t = topologyFrom(file, 'reversed.json');
    expect(t.interfaces.map((i) => [i.name, i.vpid])).toEqual(want);
    expect(t.ports.find((p) => p.name === 'uplink0')!.vpid).toBe(6);
    // Loaded in another process, the bundled file gives the same VPIDs as here (nothing depends on a run's state).
    const here = loadTopology(join(FIXTURES, 'topology.json')).interfaces.map((i) => `${i.name}=${i.vpid}`).join(' ');
    const there = execFileSync(process.execPath, ['--input-type=module', '-e',
      `import { loadTopology } from ${JSON.stringify(join(ROOT, 'dist', 'control', 'topology.js'))};
       console.log(loadTopology(${JSON.stringify(join(FIXTURES, 'topology.json'))}).interfaces.map((i) => i.name + '=' + i.vpid).join(' '));`], { encoding: 'utf8' }).trim();
    expect(there).toBe('vm1-eth0=1 vm2-eth0=2 vm3-eth0=3 vm4-eth0=4 vm5-eth0=5');
    expect(here).toBe(there);
  });

  it('a tunnel address with too many IPv6 groups around "::" is refused naming the field (it was a RangeError)', () => {
    const two = JSON.parse(readFileSync(join(FIXTURES, 'two-hosts.json'), 'utf8')).hosts[0];
    two.tunnel.vtep6 = '1:2:3:4:5:6:7:8::9';
    let msg = '';
    try { topologyFrom(two, 'topo.json'); } catch (e) { expect(e).toBeInstanceOf(FpoError); msg = (e as Error).message; }
    expect(msg).toMatch(/tunnel\.vtep6: expected an IPv6 address/);
  });

  it('names the field of a shape error', () => {
    expect(err((t) => (t.ports[2].ppid = 'two'))).toMatch(/^topo\.json: ports\[2\]\.ppid: .*integer/);
    expect(err((t) => (t.nodes[0].interfaces[0].mac = 'zz'))).toMatch(/nodes\[0\]\.interfaces\[0\]\.mac: expected a MAC address/);
    expect(err((t) => (t.ports[0].speed = 10))).toMatch(/ports\[0\]: .*speed/);
    expect(err((t) => delete t.segments)).toMatch(/segments: /);
  });

  it('refuses the live ports\' options where they do not apply, naming the field (io, offload, tpacket)', () => {
    expect(err((t) => (t.ports[0].io = 'ring'))).toMatch(/ports\[0\]\.io: "io" is for afpacket ports; this port is pcap/);
    expect(err((t) => (t.ports[0].offload = true))).toMatch(/ports\[0\]\.offload: offloads are for TAP ports and afpacket ports on rings; this port is pcap/);
    expect(err((t) => Object.assign(t.ports[0], { kind: 'afpacket', device: 'x0', io: 'read', offload: true }))).toMatch(/ports\[0\]\.offload: .*afpacket with io read/);
    expect(err((t) => Object.assign(t.ports[0], { kind: 'tap', device: 'x0', tpacket: 2 }))).toMatch(/ports\[0\]\.tpacket: "tpacket" is for afpacket ports on rings; this port is tap/);
    expect(err((t) => Object.assign(t.ports[0], { kind: 'afpacket', device: 'x0', tpacket: 4 }))).toMatch(/ports\[0\]\.tpacket: /);
    expect(err((t) => Object.assign(t.ports[0], { kind: 'afpacket', device: 'x0', io: 'mmap' }))).toMatch(/ports\[0\]\.io: /);
    expect(err((t) => Object.assign(t.ports[0], { kind: 'afpacket', device: 'x0', io: 'xdp', offload: true }))).toMatch(/ports\[0\]\.offload: .*afpacket with io xdp/);
    expect(err((t) => Object.assign(t.ports[0], { kind: 'afpacket', device: 'x0', io: 'xdp', tpacket: 2 }))).toMatch(/ports\[0\]\.tpacket: "tpacket" is for afpacket ports on rings; this port is afpacket with io xdp/);
    expect(err((t) => Object.assign(t.ports[0], { kind: 'tap', device: 'x0', io: 'xdp' }))).toMatch(/ports\[0\]\.io: "io" is for afpacket ports; this port is tap/);
  });

  it('says what was expected and what it got, in zod\'s words but for integers, which give their range (the checks are control/check.ts, not zod)', () => {
    expect(err((t) => (t.ports[2].ppid = 'two'))).toBe('topo.json: ports[2].ppid: Invalid input: expected an integer in 0..4095, received string');
    expect(err((t) => (t.ports[2].ppid = 1.5))).toBe('topo.json: ports[2].ppid: Invalid input: expected an integer in 0..4095, got 1.5');
    expect(err((t) => (t.ports[2].ppid = 4096))).toBe('topo.json: ports[2].ppid: Invalid input: expected an integer in 0..4095, got 4096');
    expect(err((t) => (t.ports[0].speed = 10))).toBe('topo.json: ports[0]: Unrecognized key: "speed"');
    expect(err((t) => (t.ports[0].role = 'spine'))).toBe('topo.json: ports[0].role: Invalid option: expected one of "vm"|"uplink"');
    expect(err((t) => (t.ports = []))).toBe('topo.json: ports: Too small: expected array to have >=1 items');
    expect(err((t) => delete t.segments)).toBe('topo.json: segments: Invalid input: expected array, received undefined');
    expect(err((t) => (t.rules[0].match.tp_dst = true))).toBe('topo.json: rules[0].match.tp_dst: Invalid input: expected string or number, received boolean');
  });

  it('fills defaults, each a fresh value', () => {
    const file = { ports: [{ name: 'up', ppid: 1, role: 'uplink', segments: ['a'] }, { name: 'p1', ppid: 2 }], segments: [{ name: 'a' }], rules: [{ priority: 1, actions: ['drop'] }, { priority: 2, actions: ['drop'] }] };
    const t = topologyFrom(file, 't.json');
    expect(t.name).toBe('topology');
    expect(t.ports[1]).toMatchObject({ role: 'vm', kind: 'pcap', device: 'p1' });
    expect(t.rules[0]).toEqual({ priority: 1, table: 0, special: false, match: {}, actions: ['drop'] });
    expect(t.rules[0].match).not.toBe(t.rules[1].match);
    expect(t.interfaces).toEqual([]);
  });

  it('names the field of a reference or uniqueness error', () => {
    expect(err((t) => (t.ports[1].ppid = 1))).toMatch(/ports\[1\]\.ppid: PPID 1 is already port "uplink0"'s/);
    expect(err((t) => (t.nodes[1].interfaces[0].port = 'vf1'))).toMatch(/nodes\[1\]\.interfaces\[0\]\.port: port "vf1" already carries interface "vm1-eth0"/);
    expect(err((t) => (t.nodes[0].interfaces[0].segment = 'green'))).toMatch(/nodes\[0\]\.interfaces\[0\]\.segment: no segment named "green"/);
    expect(err((t) => (t.nodes[0].interfaces[0].port = 'vf9'))).toMatch(/no port named "vf9"/);
    expect(err((t) => (t.nodes[0].interfaces[0].port = 'uplink0'))).toMatch(/is an uplink/);
    expect(err((t) => (t.replay.inputPort = 'nowhere'))).toMatch(/replay\.inputPort: no port named "nowhere"/);
    expect(err((t) => (t.nodes[1].interfaces[0].mac = '02:00:00:00:00:01'))).toMatch(/MAC 02:00:00:00:00:01 is already interface "vm1-eth0"/);
  });

  it('a file that is not JSON is refused with its path', () => {
    const p = join(tempDir(), 'bad.json');
    writeFileSync(p, '{ "ports": [');
    expect(() => loadTopology(p)).toThrowError(/bad\.json: \(file\): not JSON/);
  });
});

// Keys that Object.prototype has, or that set it: a topology's names and keys are the user's text.
const PROTO_KEYS = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf'];

/** The bundled topology with `edit` applied to its JSON text (so "__proto__" is an own key, as JSON.parse makes it). */
function fromText(edit: (text: string) => string): unknown {
  return JSON.parse(edit(readFileSync(join(FIXTURES, 'topology.json'), 'utf8')));
}

function refusal(json: unknown): string {
  try {
    topologyFrom(json, 'topo.json');
  } catch (e) {
    expect(e).toBeInstanceOf(FpoError);
    expect((e as FpoError).code).toBe('FPO_ERR_BAD_TOPOLOGY');
    return (e as Error).message;
  }
  throw new Error('expected the topology to be refused');
}

describe('topology names and keys from the user', () => {
  it('a rule\'s match with a key Object.prototype has ("__proto__", "constructor", …) is refused naming the key, not taken as match-all', () => {
    let n = 0;
    for (const k of PROTO_KEYS) {
      for (const value of ['23', '{ "tp_dst": 23 }']) {
        const json = fromText((t) => t.replace('"match": { "eth_type": "0x0800", "ip_proto": 6, "tp_dst": 23 }', `"match": { ${JSON.stringify(k)}: ${value} }`));
        expect(refusal(json)).toBe(`topo.json: rules[0].match: unknown field ${JSON.stringify(k)}; expected one of in_port, vlan_tpid, vlan_tci, vlan_vid, eth_dst, eth_src, eth_type, ip_proto, ip_frag, ipv4_src, ipv4_dst, ipv6_src, ipv6_dst, tp_src, tp_dst, tun_id, tun_src, tun_dst, ct_state, recirc_id, ct_zone`);
        n++;
      }
    }
    expect(n).toBe(10);
  });

  it('a rule\'s match is a null-prototype object holding exactly the fields given', () => {
    const t = loadTopology(join(FIXTURES, 'topology.json'));
    expect(Object.getPrototypeOf(t.rules[0].match)).toBe(null);
    expect(Object.keys(t.rules[0].match)).toEqual(['eth_type', 'ip_proto', 'tp_dst']);
  });

  it('a key Object.prototype has, in any object of the file, is refused by name', () => {
    for (const k of PROTO_KEYS) {
      const key = JSON.stringify(k);
      expect(refusal(fromText((t) => t.replace('{ "name": "vf1", "ppid": 11 }', `{ "name": "vf1", "ppid": 11, ${key}: 1 }`)))).toBe(`topo.json: ports[1]: Unrecognized key: ${key}`);
      expect(refusal(fromText((t) => t.replace('"name": "demo",', `"name": "demo", ${key}: { "x": 1 },`)))).toBe(`topo.json: (top level): Unrecognized key: ${key}`);
      expect(refusal(fromText((t) => t.replace('"replay": { "inputPort": "uplink0" }', `"replay": { "inputPort": "uplink0", ${key}: "vf1" }`)))).toBe(`topo.json: replay: Unrecognized key: ${key}`);
    }
  });

  it('a key left out is left out even when Object.prototype has one of its name', () => {
    // "constructor" etc. are not keys of any shape; what a missing key reads must be undefined, never a prototype's.
    const t = topologyFrom({ ports: [{ name: 'p', ppid: 1 }], segments: [{ name: 's' }] }, 't.json');
    expect(t.name).toBe('topology');
  });

  it('names that Object.prototype has ("constructor", "toString", …) are ordinary names: VPIDs are numbers, references resolve', () => {
    const names = PROTO_KEYS.slice(1);
    const file = {
      name: 'toString',
      ports: [{ name: 'constructor', ppid: 1, role: 'uplink', segments: ['valueOf'] }, ...names.map((n, i) => ({ name: n + '-port', ppid: 10 + i }))],
      segments: [{ name: 'valueOf' }],
      nodes: names.map((n, i) => ({ name: n, interfaces: [{ name: n, mac: `02:00:00:00:00:0${i + 1}`, segment: 'valueOf', port: n + '-port' }] })),
      rules: [{ priority: 5, match: { in_port: 'toString' }, actions: ['output:hasOwnProperty'] }],
      replay: { inputPort: 'constructor' },
    };
    const t = topologyFrom(file, 't.json');
    expect(t.interfaces.map((i) => [i.name, i.vpid, i.port])).toEqual(names.map((n, i) => [n, i + 1, n + '-port']));
    expect(t.ports[0].vpid).toBe(5);
    expect(t.inputPort).toBe('constructor');
    // A reference to a name that is only on Object.prototype, not in the file, is refused.
    expect(refusal({ ...file, nodes: [{ name: 'a', interfaces: [{ name: 'a', mac: '02:00:00:00:00:01', segment: 'hasOwnProperty' }] }] })).toBe('topo.json: nodes[0].interfaces[0].segment: no segment named "hasOwnProperty"');
    expect(refusal({ ...file, replay: { inputPort: 'valueOf' } })).toBe('topo.json: replay.inputPort: no port named "valueOf"');
  });

  it('"__proto__" is not a name (names start with a letter or digit), refused with the field', () => {
    expect(refusal(fromText((t) => t.replace('"name": "vm1-eth0"', '"name": "__proto__"')))).toMatch(/^topo\.json: nodes\[0\]\.interfaces\[0\]\.name: expected a name of letters/);
  });

  it('a huge PPID says the range 0..4095, as do a negative one and one JSON reads as Infinity', () => {
    for (const v of ['4096', '1000000000000', '1e400', '-1', '2.5']) {
      const got = Number(v) === Infinity ? 'Infinity' : String(Number(v));
      expect(refusal(fromText((t) => t.replace('"ppid": 11', `"ppid": ${v}`)))).toBe(`topo.json: ports[1].ppid: Invalid input: expected an integer in 0..4095, got ${got}`);
    }
  });
});

describe('topology names that become paths', () => {
  it('a host name that is not one path segment is refused at load, naming the field', () => {
    const bad: [string, RegExp][] = [
      ['../../x', /expected one path segment/], ['a/b', /expected one path segment/], ['/abs', /expected one path segment/], ['a\\b', /expected one path segment/],
      ['.', /not only dots/], ['..', /not only dots/], ['...', /not only dots/], ['', /empty/], ['x'.repeat(65), /at most 64 characters/],
      ['a\u0000b', /no control characters or NUL/], ['a\nb', /no control characters/],
    ];
    for (const [name, why] of bad) {
      const msg = refusal({ ...base(), name });
      expect(msg, JSON.stringify(name)).toMatch(/^topo\.json: name: /);
      expect(msg, JSON.stringify(name)).toMatch(why);
    }
    expect(bad).toHaveLength(11);
    for (const name of ['hostA', 'host a', 'x'.repeat(64), 'a.b', '.hidden', 'a..b']) expect(topologyFrom({ ...base(), name }, 't.json').name).toBe(name);
  });

  it('a multi-host file with a host named "../../x" is refused naming hosts[i].name', () => {
    const d = tempDir();
    const two = JSON.parse(readFileSync(join(FIXTURES, 'two-hosts.json'), 'utf8'));
    two.hosts[1].name = '../../x';
    const p = join(d, 'hosts.json');
    writeFileSync(p, JSON.stringify(two));
    expect(() => loadHosts(p)).toThrowError(`${p}: hosts[1]: name: expected one path segment (it becomes a folder name), without "/" or "\\": "../../x"`);
  });

  it('port names (OUT/<port>.pcap) and TAP device names are never dots-only or separators', () => {
    for (const name of ['..', '.', 'a/b', '../vf1']) expect(refusal(fromText((t) => t.replace('"name": "vf1"', `"name": ${JSON.stringify(name)}`)))).toMatch(/^topo\.json: ports\[1\]\.name: expected a name/);
    for (const device of ['.', '..']) expect(refusal(fromText((t) => t.replace('{ "name": "vf1", "ppid": 11 }', `{ "name": "vf1", "ppid": 11, "kind": "tap", "device": "${device}" }`)))).toBe('topo.json: ports[1].device: expected an interface name that is not only dots (Linux refuses "." and "..")');
  });
});

// Fuzz: what a careless or hostile user can put in a topology file.
const PATHISH = ['..', '.', '...', '../../x', 'a/b', '/etc', 'x\u0000y', 'a\\b', 'x'.repeat(300), '', ' ', 'vf1/../../up', 'a\nb'];

/** Sets own key `k` on `o` (also "__proto__", which plain assignment would take as the prototype). */
function setOwn(o: Record<string, unknown>, k: string, v: unknown): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, configurable: true, writable: true });
}

/** Every path into a JSON value (the root is []). */
function pathsOf(v: unknown, at: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => pathsOf(x, [...at, i], out));
  else if (v !== null && typeof v === 'object') for (const k of Object.keys(v)) pathsOf((v as Record<string, unknown>)[k], [...at, k], out);
  return out;
}

type Mutation = { kind: 'set' | 'delete' | 'add-key' | 'rename'; at: number; key: string; value: unknown };

const mutation: fc.Arbitrary<Mutation> = fc.record({
  kind: fc.constantFrom('set', 'delete', 'add-key', 'rename'),
  at: fc.nat(),
  key: fc.oneof(fc.constantFrom(...PROTO_KEYS, 'name', 'ppid', 'segments', 'match', 'hosts'), fc.string({ maxLength: 8 })),
  value: fc.oneof(
    fc.jsonValue({ maxDepth: 2 }),
    fc.constantFrom(...PROTO_KEYS, ...PATHISH),
    fc.constantFrom(4096, -1, 1e12, 2 ** 53, 0.5, 65536, 0xffffffff, null, [], {}, true),
    fc.dictionary(fc.constantFrom(...PROTO_KEYS, 'tp_dst', 'name'), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 2 }),
  ),
});

/** A copy of `doc` with the mutations applied (paths chosen among the document's own). */
function mutate(doc: unknown, ms: Mutation[]): unknown {
  const root = { doc: structuredClone(doc) } as Record<string, unknown>;
  for (const m of ms) {
    const paths = pathsOf(root.doc);
    const path = paths[m.at % paths.length];
    let parent: Record<string, unknown> | unknown[] = root;
    let key: string | number = 'doc';
    for (const p of path) {
      parent = (parent as Record<string, unknown>)[key] as Record<string, unknown>;
      key = p;
    }
    const node = (parent as Record<string, unknown>)[key];
    if (m.kind === 'set') setOwn(parent as Record<string, unknown>, String(key), m.value);
    else if (m.kind === 'delete' && path.length > 0) {
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete (parent as Record<string, unknown>)[key];
    } else if (m.kind === 'add-key' && node !== null && typeof node === 'object' && !Array.isArray(node)) setOwn(node as Record<string, unknown>, m.key, m.value);
    else if (m.kind === 'rename' && node !== null && typeof node === 'object' && !Array.isArray(node)) setOwn(node as Record<string, unknown>, 'name', typeof m.value === 'string' ? m.value : PATHISH[m.at % PATHISH.length]);
  }
  return root.doc;
}

/** A key of Object.prototype that the JSON text has in some object, or null (not JSON: null). */
function protoKeyIn(text: string | Uint8Array): string | null {
  let v: unknown;
  try {
    v = JSON.parse(typeof text === 'string' ? text : Buffer.from(text).toString('utf8'));
  } catch {
    return null;
  }
  const walk = (x: unknown): string | null => {
    if (Array.isArray(x)) { for (const y of x) { const k = walk(y); if (k !== null) return k; } return null; }
    if (x === null || typeof x !== 'object') return null;
    for (const k of Object.keys(x)) {
      if (PROTO_KEYS.includes(k)) return k;
      const got = walk((x as Record<string, unknown>)[k]);
      if (got !== null) return got;
    }
    return null;
  };
  return walk(v);
}

/** Files and folders under `dir`, relative, sorted. */
function tree(dir: string, at = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(dir, at), { withFileTypes: true })) {
    const rel = at ? `${at}/${e.name}` : e.name;
    out.push(rel);
    if (e.isDirectory()) out.push(...tree(dir, rel));
  }
  return out.sort();
}

describe('topology files (fuzz): a topology or an FpoError naming the file and a field; nothing written outside --out', () => {
  /** Loads `text` as a topology file in a fresh root/a/b/; replays the capture into root/a/b/out when it loads. */
  function check(text: string | Uint8Array, capture: string): 'loaded' | 'refused' {
    const root = tempDir('fuzz');
    const here = join(root, 'a', 'b');
    mkdirSync(here, { recursive: true });
    const file = join(here, 'topo.json');
    writeFileSync(file, text);
    let hosts: ReturnType<typeof loadHosts>;
    try {
      hosts = loadHosts(file);
      // No object of a topology, rule matches included, may have a key that Object.prototype has: such a file is refused.
      const keyed = protoKeyIn(text);
      expect(keyed, `loaded with the key ${keyed}`).toBe(null);
    } catch (e) {
      if (!(e instanceof FpoError)) throw e;
      expect(['FPO_ERR_BAD_TOPOLOGY', 'FPO_ERR_IO']).toContain(e.code);
      expect(e.message.startsWith(`${file}: `), e.message).toBe(true);
      // After the file: hosts[i]: (several hosts), then the field and what is wrong with it.
      expect(e.message.slice(file.length + 2), e.message).toMatch(/^(hosts\[\d+\]: )?(\(file\)|\(top level\)|hosts|[A-Za-z]+(\[\d+\]|\.[^\s:]+)*): \S/);
      return 'refused';
    }
    const out = join(here, 'out');
    try {
      if (hosts.length > 1) replayHosts({ capture, hosts, outDir: out });
      else replay({ capture, topology: hosts[0], outDir: out });
    } catch (e) {
      if (!(e instanceof FpoError)) throw e; // a TypeError here would be exit 70
    }
    // Nothing beside topo.json and out/, nothing above a/b; no temp file left behind.
    expect(readdirSync(root)).toEqual(['a']);
    expect(readdirSync(join(root, 'a'))).toEqual(['b']);
    const files = tree(here);
    for (const f of files) expect(f === 'topo.json' || f === 'out' || f.startsWith('out/'), f).toBe(true);
    for (const f of files) expect(f, 'a temp file left').not.toMatch(/\.partial-\d+$/);
    return 'loaded';
  }

  const topology = JSON.parse(readFileSync(join(FIXTURES, 'topology.json'), 'utf8'));
  const twoHosts = JSON.parse(readFileSync(join(FIXTURES, 'two-hosts.json'), 'utf8'));

  it('near-valid mutations of fixtures/topology.json (prototype-ish keys, path-ish names, out-of-range numbers)', () => {
    const seen = { loaded: 0, refused: 0 };
    fc.assert(fc.property(fc.array(mutation, { minLength: 1, maxLength: 3 }), (ms) => {
      seen[check(JSON.stringify(mutate(topology, ms)), join(FIXTURES, 'demo.pcap'))]++;
    }), { numRuns: 400, seed: 17 });
    // Both outcomes were exercised (a fuzz that only ever refuses tests little).
    expect(seen.loaded).toBeGreaterThan(20);
    expect(seen.refused).toBeGreaterThan(100);
  }, 120_000);

  it('near-valid mutations of fixtures/two-hosts.json (host names become folders)', () => {
    const seen = { loaded: 0, refused: 0 };
    // Besides random mutations, one host's name is often set outright (a rename rarely lands on a host among ~100 objects).
    const hostName = fc.option(fc.record({ host: fc.constantFrom(0, 1), name: fc.constantFrom(...PATHISH, '../x', 'hostC', '..hidden') }), { freq: 2 });
    fc.assert(fc.property(fc.array(mutation, { minLength: 0, maxLength: 2 }), hostName, (ms, hn) => {
      const doc = mutate(twoHosts, ms) as { hosts?: { name?: unknown }[] };
      if (hn !== null && Array.isArray(doc.hosts) && doc.hosts[hn.host] !== null && typeof doc.hosts[hn.host] === 'object') doc.hosts[hn.host].name = hn.name;
      seen[check(JSON.stringify(doc), join(FIXTURES, 'two-hosts.pcap'))]++;
    }), { numRuns: 200, seed: 17 });
    expect(seen.loaded).toBeGreaterThan(10);
    expect(seen.refused).toBeGreaterThan(50);
  }, 120_000);

  it('random JSON and random bytes', () => {
    let n = 0;
    fc.assert(fc.property(fc.oneof(fc.jsonValue().map((v) => JSON.stringify(v) ?? 'null'), fc.uint8Array({ maxLength: 200 }), fc.string({ maxLength: 100 })), (x) => {
      check(x, join(FIXTURES, 'demo.pcap'));
      n++;
    }), { numRuns: 300, seed: 17 });
    expect(n).toBe(300);
  });

  it('through the CLI: exit 0 or 1 with one line on stderr, never 70 (internal error)', () => {
    const samples = fc.sample(fc.array(mutation, { minLength: 1, maxLength: 3 }), { numRuns: 25, seed: 70 });
    let runs = 0;
    for (const ms of samples) {
      const root = tempDir('fuzz-cli');
      const file = join(root, 'topo.json');
      writeFileSync(file, JSON.stringify(mutate(topology, ms)));
      const r = runCli(['replay', join(FIXTURES, 'demo.pcap'), '-t', file, '-o', join(root, 'out')]);
      expect([0, 1], r.stderr).toContain(r.status);
      if (r.status === 1) expect(r.stderr, r.stderr).toMatch(new RegExp(`^fpo: ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: [^\n]+\n$`));
      runs++;
    }
    expect(runs).toBe(25);
  }, 120_000);
});
