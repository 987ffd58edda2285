/**
 * control/capture.ts against a Datapath in this process: with no capture
 * the datapath has no tap at all (rxTap null, every port's own tx side);
 * a capture sets exactly its port's taps, and its end takes them away and
 * gives the port its direct copies back.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { Captures } from '../../control/capture.js';
import type { TxPort } from '../../datapath/datapath.js';
import { Datapath } from '../../datapath/datapath.js';

/** A socket that keeps what is written (what a capture's Session needs of one). */
class FakeSocket extends EventEmitter {
  chunks: Buffer[] = [];
  destroyed = false;
  writable = true;
  readableEnded = false;
  writableLength = 0;
  write(b: Buffer): boolean {
    this.chunks.push(b);
    return true;
  }
}

const ports = (dp: Datapath) => (dp as unknown as { ports: (TxPort | undefined)[] }).ports;

describe('Captures', () => {
  it('no capture: no tap; a capture taps its port only; its end leaves the datapath as it was', async () => {
    const dp = new Datapath({ batchCapacity: 32 });
    const own: TxPort = { writeBatch: () => undefined };
    const other: TxPort = { writeBatch: () => undefined };
    dp.addPort(1, own);
    dp.addPort(2, other);
    const caps = new Captures(dp);
    expect(dp.rxTap).toBeNull();
    const req = await caps.check({ port: 'p1', filter: 'udp', count: 5 }, (n) => (n === 'p1' ? { name: 'p1', ppid: 1 } : undefined));
    const sock = new FakeSocket();
    const done = caps.run(req, sock as unknown as Socket);
    expect(caps.running).toBe(1);
    expect(dp.rxTap).not.toBeNull();
    expect(ports(dp)[1]).not.toBe(own); // the tap in front of port 1
    expect(ports(dp)[2]).toBe(other); // port 2 untouched
    sock.emit('end'); // the client half-closes: the capture ends
    await done;
    expect(caps.running).toBe(0);
    expect(dp.rxTap).toBeNull();
    expect(ports(dp)[1]).toBe(own);
    // The stream: section header, interface description, then the statistics block (no frame came).
    const all = Buffer.concat(sock.chunks);
    expect(all.readUInt32LE(0)).toBe(0x0a0d0d0a);
    expect(all.readUInt32LE(28)).toBe(1);
    expect(all.readUInt32LE(all.length - 52)).toBe(5);
  });

  it('two captures of one port share one tap; it goes when the last one ends', async () => {
    const dp = new Datapath({ batchCapacity: 32 });
    const own: TxPort = { writeBatch: () => undefined };
    dp.addPort(7, own);
    const caps = new Captures(dp);
    const find = () => ({ name: 'p', ppid: 7 });
    const a = new FakeSocket();
    const b = new FakeSocket();
    const da = caps.run(await caps.check({ port: 'p' }, find), a as unknown as Socket);
    const db = caps.run(await caps.check({ port: 'p' }, find), b as unknown as Socket);
    const tapped = ports(dp)[7];
    expect(tapped).not.toBe(own);
    a.emit('close');
    await da;
    expect(ports(dp)[7]).toBe(tapped);
    expect(dp.rxTap).not.toBeNull();
    b.emit('close');
    await db;
    expect(ports(dp)[7]).toBe(own);
    expect(dp.rxTap).toBeNull();
  });
});
