import { BlockrepError } from '../shared/index.js';

export function parseIntOption(text: string, name: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new BlockrepError('USAGE', `${name} must be a whole number from ${min} to ${max}, not ${JSON.stringify(text)}`);
  }
  return n;
}
