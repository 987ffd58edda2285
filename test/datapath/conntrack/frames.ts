/**
 * The conntrack tests' one step: a frame as the only packet of a batch,
 * parsed by fpo's parser (as the datapath hands packets to ct).
 */
import { PacketBatch } from '../../../datapath/batch.js';
import { MappingTable } from '../../../datapath/mapping/mapping-table.js';
import { Parse } from '../../../datapath/parse/parse.js';

const parse = new Parse(new MappingTable(100, 100).inPortKey);

/** `frame` (its first `caplen` bytes captured) as packet 0 of `b` (a new batch of one if none), parsed; returns the batch. */
export function parsedOne(frame: Uint8Array, b: PacketBatch = new PacketBatch(1), caplen = frame.length): PacketBatch {
  b.batchSetBuffer(frame);
  b.count = 1;
  b.off[0] = 0;
  b.caplen[0] = caplen;
  b.wirelen[0] = frame.length;
  b.inPpid[0] = 1;
  b.drop[0] = 0;
  b.ctState[0] = 0;
  parse.process(b);
  return b;
}

/** The selection of packet 0. */
export const FIRST = Uint16Array.of(0);
