// The composer's counter: which alphabet a text goes out in and in how many parts, counted
// the way smsbus.encoding.segment_text counts (tests/web/test_counter.py compares the two).
// The alphabets and limits come from the server (smsbus.encoding.counter_table()), so the
// GSM 03.38 table is never written out a second time.
"use strict";

window.SmsCounter = (function () {
  // octets one code point takes in an alphabet, or 0 when the alphabet lacks it
  function width(character, encoding, table) {
    if (encoding === "gsm7") {
      if (table.gsm7_single.includes(character)) return 1;
      if (table.gsm7_extended.includes(character)) return 2;
      return 0;
    }
    const code = character.codePointAt(0);
    if (encoding === "latin1") return code <= 0xff ? 1 : 0;
    return code > 0xffff ? 4 : 2;
  }

  function widths(text, encoding, table) {
    const result = [];
    for (const character of text) {
      const octets = width(character, encoding, table);
      if (octets === 0) return null;
      result.push(octets);
    }
    return result;
  }

  // {encoding, parts, characters, left}: left is how many octets' room the last part has
  function count(text, table, preferred) {
    let encoding = "ucs2";
    let octets = null;
    for (const candidate of preferred || ["gsm7", "ucs2"]) {
      octets = widths(text, candidate, table);
      if (octets !== null) {
        encoding = candidate;
        break;
      }
    }
    if (octets === null) octets = widths(text, "ucs2", table);
    const limits = table.limits[encoding];
    const total = octets.reduce((sum, n) => sum + n, 0);
    const characters = octets.length;
    if (total <= limits.single) {
      return { encoding, parts: characters ? 1 : 0, characters, left: limits.single - total };
    }
    let parts = 1;
    let used = 0;
    for (const n of octets) {
      if (used + n > limits.per_part) {
        parts += 1;
        used = 0;
      }
      used += n;
    }
    return { encoding, parts, characters, left: limits.per_part - used, tooLong: parts > table.max_parts };
  }

  return { count };
})();
