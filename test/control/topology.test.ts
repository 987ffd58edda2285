import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadHosts, loadTopology, topologyFrom } from '../../control/topology.js';
import { FpoError } from '../../datapath/errors.js';
import { FIXTURES, ROOT, cleanTemp, tempDir } from '../helpers.js';

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

  it('names the field of a shape error', () => {
    expect(err((t) => (t.ports[2].ppid = 'two'))).toMatch(/^topo\.json: ports\[2\]\.ppid: .*integer/);
    expect(err((t) => (t.nodes[0].interfaces[0].mac = 'zz'))).toMatch(/nodes\[0\]\.interfaces\[0\]\.mac: expected a MAC address/);
    expect(err((t) => (t.ports[0].speed = 10))).toMatch(/ports\[0\]: .*speed/);
    expect(err((t) => delete t.segments)).toMatch(/segments: /);
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
    expect(t.rules[0]).toEqual({ priority: 1, special: false, match: {}, actions: ['drop'] });
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
        expect(refusal(json)).toBe(`topo.json: rules[0].match: unknown field ${JSON.stringify(k)}; expected one of in_port, vlan_tpid, vlan_tci, vlan_vid, eth_dst, eth_src, eth_type, ip_proto, ip_frag, ipv4_src, ipv4_dst, ipv6_src, ipv6_dst, tp_src, tp_dst, tun_id, tun_src, tun_dst`);
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
