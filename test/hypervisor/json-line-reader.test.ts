import { describe, expect, it } from 'vitest';
import { JsonLineReader, parseJsonObject } from '../../src/hypervisor/json-line-reader.js';

describe('JsonLineReader', () => {
  it('splits on LF, drops a CR before it and empty lines, and joins lines split across chunks', () => {
    const lines: string[] = [];
    const r = new JsonLineReader((l) => lines.push(l.toString()), () => expect.fail('no overflow'));
    r.push(Buffer.from('{"a":1}\r\n{"b"'));
    r.push(Buffer.from(':2}\n\n{"c":'));
    r.push(Buffer.from('3}\r'));
    r.push(Buffer.from('\n'));
    expect(lines).toEqual(['{"a":1}', '{"b":2}', '{"c":3}']);
  });

  it('refuses to buffer a line longer than its limit, then goes on with the next', () => {
    const lines: string[] = [];
    const overflows: number[] = [];
    const r = new JsonLineReader((l) => lines.push(l.toString()), (n) => overflows.push(n), 16);
    r.push(Buffer.from('x'.repeat(10)));
    r.push(Buffer.from('y'.repeat(10)));
    expect(overflows).toEqual([20]);
    r.push(Buffer.from('\n{"ok":1}\n'));
    expect(lines.at(-1)).toBe('{"ok":1}');
  });

  it('parses JSON objects only', () => {
    expect(parseJsonObject('{"return":{}}')).toEqual({ return: {} });
    expect(parseJsonObject('[1]')).toBeUndefined();
    expect(parseJsonObject('nope')).toBeUndefined();
    expect(parseJsonObject(Buffer.from([0xff, 0x7b]))).toBeUndefined();
  });
});
