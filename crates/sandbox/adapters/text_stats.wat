;; text_stats: input {"text": "..."} (UTF-8 JSON) -> {"characters":C,"words":W,"lines":L,"bytes":B}
;; over the decoded string: C = Unicode scalar values, B = UTF-8 length, W = maximal runs of
;; non-whitespace (space, \t, \n, \v, \f, \r), L = number of \n plus one when non-empty (0 for "").
;; An object without a string member "text" -> {"error":"text_missing"}; malformed JSON (including
;; a lone surrogate escape or a raw control character in a string) -> {"error":"invalid_json"}.
;; Members other than the first "text" are skipped: strings fully checked, containers by nesting.
(module
  (memory (export "memory") 2)
  (data (i32.const 8) "text")
  (data (i32.const 16) "{\"characters\":")
  (data (i32.const 32) ",\"words\":")
  (data (i32.const 48) ",\"lines\":")
  (data (i32.const 64) ",\"bytes\":")
  (data (i32.const 80) "{\"error\":\"text_missing\"}")
  (data (i32.const 112) "{\"error\":\"invalid_json\"}")

  (global $heap (mut i32) (i32.const 1024))
  (global $pos (mut i32) (i32.const 0))
  (global $end (mut i32) (i32.const 0))
  (global $chars (mut i32) (i32.const 0))
  (global $words (mut i32) (i32.const 0))
  (global $newlines (mut i32) (i32.const 0))
  (global $bytes (mut i32) (i32.const 0))

  ;; Bump allocator: 8-byte aligned, grows memory as needed, traps when it cannot.
  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $ptr i32) (local $new i32) (local $size i32)
    (local.set $ptr (global.get $heap))
    (if (i32.lt_s (local.get $len) (i32.const 0)) (then unreachable))
    (local.set $new
      (i32.and (i32.add (i32.add (local.get $ptr) (local.get $len)) (i32.const 7)) (i32.const -8)))
    (if (i32.lt_u (local.get $new) (local.get $ptr)) (then unreachable))
    (local.set $size (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $new) (local.get $size))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u
                  (i32.add (i32.sub (local.get $new) (local.get $size)) (i32.const 65535))
                  (i32.const 16)))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $new))
    (local.get $ptr))

  (func $byte (result i32)
    (i32.load8_u (global.get $pos)))

  (func $at_end (result i32)
    (i32.ge_u (global.get $pos) (global.get $end)))

  ;; JSON whitespace between tokens: space, \t, \n, \r.
  (func $skip_ws
    (local $c i32)
    (block $done
      (loop $next
        (br_if $done (call $at_end))
        (local.set $c (call $byte))
        (br_if $done
          (i32.eqz
            (i32.or
              (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
              (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13))))))
        (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
        (br $next))))

  (func $hex_digit (param $c i32) (result i32)
    (if (i32.and (i32.ge_u (local.get $c) (i32.const 48)) (i32.le_u (local.get $c) (i32.const 57)))
      (then (return (i32.sub (local.get $c) (i32.const 48)))))
    (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 102)))
      (then (return (i32.sub (local.get $c) (i32.const 87)))))
    (if (i32.and (i32.ge_u (local.get $c) (i32.const 65)) (i32.le_u (local.get $c) (i32.const 70)))
      (then (return (i32.sub (local.get $c) (i32.const 55)))))
    (i32.const -1))

  ;; Four hex digits at $pos -> value (advancing $pos), or -1.
  (func $hex4 (result i32)
    (local $v i32) (local $i i32) (local $d i32)
    (if (i32.gt_u (i32.add (global.get $pos) (i32.const 4)) (global.get $end))
      (then (return (i32.const -1))))
    (block $done
      (loop $next
        (br_if $done (i32.eq (local.get $i) (i32.const 4)))
        (local.set $d
          (call $hex_digit (i32.load8_u (i32.add (global.get $pos) (local.get $i)))))
        (if (i32.lt_s (local.get $d) (i32.const 0)) (then (return (i32.const -1))))
        (local.set $v (i32.or (i32.shl (local.get $v) (i32.const 4)) (local.get $d)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (global.set $pos (i32.add (global.get $pos) (i32.const 4)))
    (local.get $v))

  ;; Next code point of the string being read (after its opening quote):
  ;; >= 0 a scalar value, -1 the closing quote (consumed), -2 malformed.
  ;; The host guarantees the input is valid UTF-8, so raw multi-byte sequences are well formed;
  ;; only their presence within the input is checked.
  (func $decode_next (result i32)
    (local $c i32) (local $cp i32) (local $lo i32) (local $n i32) (local $i i32)
    (if (call $at_end) (then (return (i32.const -2))))
    (local.set $c (call $byte))
    (if (i32.eq (local.get $c) (i32.const 34))
      (then
        (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
        (return (i32.const -1))))
    (if (i32.lt_u (local.get $c) (i32.const 32)) (then (return (i32.const -2))))
    (if (i32.eq (local.get $c) (i32.const 92))
      (then
        (if (i32.ge_u (i32.add (global.get $pos) (i32.const 1)) (global.get $end))
          (then (return (i32.const -2))))
        (local.set $c (i32.load8_u (i32.add (global.get $pos) (i32.const 1))))
        (global.set $pos (i32.add (global.get $pos) (i32.const 2)))
        (if (i32.eq (local.get $c) (i32.const 34)) (then (return (i32.const 34))))
        (if (i32.eq (local.get $c) (i32.const 92)) (then (return (i32.const 92))))
        (if (i32.eq (local.get $c) (i32.const 47)) (then (return (i32.const 47))))
        (if (i32.eq (local.get $c) (i32.const 98)) (then (return (i32.const 8))))
        (if (i32.eq (local.get $c) (i32.const 102)) (then (return (i32.const 12))))
        (if (i32.eq (local.get $c) (i32.const 110)) (then (return (i32.const 10))))
        (if (i32.eq (local.get $c) (i32.const 114)) (then (return (i32.const 13))))
        (if (i32.eq (local.get $c) (i32.const 116)) (then (return (i32.const 9))))
        (if (i32.ne (local.get $c) (i32.const 117)) (then (return (i32.const -2))))
        (local.set $cp (call $hex4))
        (if (i32.lt_s (local.get $cp) (i32.const 0)) (then (return (i32.const -2))))
        ;; A lone low surrogate is not a scalar value.
        (if (i32.and (i32.ge_u (local.get $cp) (i32.const 0xDC00)) (i32.le_u (local.get $cp) (i32.const 0xDFFF)))
          (then (return (i32.const -2))))
        (if (i32.and (i32.ge_u (local.get $cp) (i32.const 0xD800)) (i32.le_u (local.get $cp) (i32.const 0xDBFF)))
          (then
            ;; A high surrogate must be followed by \u and a low surrogate.
            (if (i32.ge_u (i32.add (global.get $pos) (i32.const 1)) (global.get $end))
              (then (return (i32.const -2))))
            (if (i32.ne (call $byte) (i32.const 92)) (then (return (i32.const -2))))
            (if (i32.ne (i32.load8_u (i32.add (global.get $pos) (i32.const 1))) (i32.const 117))
              (then (return (i32.const -2))))
            (global.set $pos (i32.add (global.get $pos) (i32.const 2)))
            (local.set $lo (call $hex4))
            (if (i32.or (i32.lt_s (local.get $lo) (i32.const 0xDC00)) (i32.gt_s (local.get $lo) (i32.const 0xDFFF)))
              (then (return (i32.const -2))))
            (local.set $cp
              (i32.add
                (i32.const 0x10000)
                (i32.or
                  (i32.shl (i32.sub (local.get $cp) (i32.const 0xD800)) (i32.const 10))
                  (i32.sub (local.get $lo) (i32.const 0xDC00)))))))
        (return (local.get $cp))))
    ;; Raw UTF-8.
    (if (i32.lt_u (local.get $c) (i32.const 0x80))
      (then
        (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
        (return (local.get $c))))
    (if (i32.lt_u (local.get $c) (i32.const 0xE0))
      (then (local.set $n (i32.const 2)) (local.set $cp (i32.and (local.get $c) (i32.const 0x1F))))
      (else
        (if (i32.lt_u (local.get $c) (i32.const 0xF0))
          (then (local.set $n (i32.const 3)) (local.set $cp (i32.and (local.get $c) (i32.const 0x0F))))
          (else (local.set $n (i32.const 4)) (local.set $cp (i32.and (local.get $c) (i32.const 0x07)))))))
    (if (i32.gt_u (i32.add (global.get $pos) (local.get $n)) (global.get $end))
      (then (return (i32.const -2))))
    (local.set $i (i32.const 1))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $cp
          (i32.or
            (i32.shl (local.get $cp) (i32.const 6))
            (i32.and (i32.load8_u (i32.add (global.get $pos) (local.get $i))) (i32.const 0x3F))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (global.set $pos (i32.add (global.get $pos) (local.get $n)))
    (local.get $cp))

  (func $utf8_len (param $cp i32) (result i32)
    (if (i32.lt_u (local.get $cp) (i32.const 0x80)) (then (return (i32.const 1))))
    (if (i32.lt_u (local.get $cp) (i32.const 0x800)) (then (return (i32.const 2))))
    (if (i32.lt_u (local.get $cp) (i32.const 0x10000)) (then (return (i32.const 3))))
    (i32.const 4))

  ;; Space, \t, \n, \v, \f, \r.
  (func $is_space (param $cp i32) (result i32)
    (i32.or
      (i32.eq (local.get $cp) (i32.const 32))
      (i32.and (i32.ge_u (local.get $cp) (i32.const 9)) (i32.le_u (local.get $cp) (i32.const 13)))))

  ;; Reads the rest of a string (after its opening quote) into the statistics: 1 ok, 0 malformed.
  (func $stats (result i32)
    (local $cp i32) (local $in_word i32)
    (block $done
      (loop $next
        (local.set $cp (call $decode_next))
        (br_if $done (i32.eq (local.get $cp) (i32.const -1)))
        (if (i32.lt_s (local.get $cp) (i32.const 0)) (then (return (i32.const 0))))
        (global.set $chars (i32.add (global.get $chars) (i32.const 1)))
        (global.set $bytes (i32.add (global.get $bytes) (call $utf8_len (local.get $cp))))
        (if (i32.eq (local.get $cp) (i32.const 10))
          (then (global.set $newlines (i32.add (global.get $newlines) (i32.const 1)))))
        (if (call $is_space (local.get $cp))
          (then (local.set $in_word (i32.const 0)))
          (else
            (if (i32.eqz (local.get $in_word))
              (then
                (global.set $words (i32.add (global.get $words) (i32.const 1)))
                (local.set $in_word (i32.const 1))))))
        (br $next)))
    (i32.const 1))

  ;; Reads a key (after its opening quote): 1 when it decodes to "text", 0 otherwise, -2 malformed.
  (func $key_is_text (result i32)
    (local $cp i32) (local $i i32) (local $same i32)
    (local.set $same (i32.const 1))
    (block $done
      (loop $next
        (local.set $cp (call $decode_next))
        (br_if $done (i32.eq (local.get $cp) (i32.const -1)))
        (if (i32.lt_s (local.get $cp) (i32.const 0)) (then (return (i32.const -2))))
        (if (i32.ge_u (local.get $i) (i32.const 4))
          (then (local.set $same (i32.const 0)))
          (else
            (if (i32.ne (local.get $cp) (i32.load8_u (i32.add (i32.const 8) (local.get $i))))
              (then (local.set $same (i32.const 0))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.and (local.get $same) (i32.eq (local.get $i) (i32.const 4))))

  ;; Rest of a string (after its opening quote): 1 ok, 0 malformed.
  (func $skip_string (result i32)
    (local $cp i32)
    (block $done
      (loop $next
        (local.set $cp (call $decode_next))
        (br_if $done (i32.eq (local.get $cp) (i32.const -1)))
        (if (i32.lt_s (local.get $cp) (i32.const 0)) (then (return (i32.const 0))))
        (br $next)))
    (i32.const 1))

  ;; Skips one value: 1 ok, 0 malformed. Containers are skipped by nesting depth (strings inside
  ;; them fully checked); scalars run to the next delimiter.
  (func $skip_value (result i32)
    (local $c i32) (local $depth i32) (local $start i32)
    (if (call $at_end) (then (return (i32.const 0))))
    (local.set $c (call $byte))
    (if (i32.eq (local.get $c) (i32.const 34))
      (then
        (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
        (return (call $skip_string))))
    (if (i32.or (i32.eq (local.get $c) (i32.const 123)) (i32.eq (local.get $c) (i32.const 91)))
      (then
        (loop $next
          (if (call $at_end) (then (return (i32.const 0))))
          (local.set $c (call $byte))
          (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
          (if (i32.eq (local.get $c) (i32.const 34))
            (then
              (if (i32.eqz (call $skip_string)) (then (return (i32.const 0))))
              (br $next)))
          (if (i32.or (i32.eq (local.get $c) (i32.const 123)) (i32.eq (local.get $c) (i32.const 91)))
            (then (local.set $depth (i32.add (local.get $depth) (i32.const 1)))))
          (if (i32.or (i32.eq (local.get $c) (i32.const 125)) (i32.eq (local.get $c) (i32.const 93)))
            (then
              (local.set $depth (i32.sub (local.get $depth) (i32.const 1)))
              (if (i32.eqz (local.get $depth)) (then (return (i32.const 1))))))
          (br $next))))
    (local.set $start (global.get $pos))
    (block $done
      (loop $next
        (br_if $done (call $at_end))
        (local.set $c (call $byte))
        (br_if $done
          (i32.or
            (i32.or
              (i32.or (i32.eq (local.get $c) (i32.const 44)) (i32.eq (local.get $c) (i32.const 125)))
              (i32.or (i32.eq (local.get $c) (i32.const 93)) (i32.eq (local.get $c) (i32.const 32))))
            (i32.or
              (i32.or (i32.eq (local.get $c) (i32.const 9)) (i32.eq (local.get $c) (i32.const 10)))
              (i32.eq (local.get $c) (i32.const 13)))))
        (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
        (br $next)))
    (i32.gt_u (global.get $pos) (local.get $start)))

  ;; Writes n in decimal at p; returns the position after it.
  (func $write_u32 (param $p i32) (param $n i32) (result i32)
    (local $len i32) (local $t i32) (local $q i32)
    (local.set $t (local.get $n))
    (loop $count
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (br_if $count (local.get $t)))
    (local.set $q (i32.add (local.get $p) (local.get $len)))
    (local.set $t (local.get $n))
    (loop $digit
      (local.set $q (i32.sub (local.get $q) (i32.const 1)))
      (i32.store8 (local.get $q) (i32.add (i32.const 48) (i32.rem_u (local.get $t) (i32.const 10))))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (br_if $digit (local.get $t)))
    (i32.add (local.get $p) (local.get $len)))

  (func $copy (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  (func $write_stats (result i64)
    (local $out i32) (local $p i32)
    (local.set $out (call $alloc (i32.const 96)))
    (local.set $p (call $copy (local.get $out) (i32.const 16) (i32.const 14)))
    (local.set $p (call $write_u32 (local.get $p) (global.get $chars)))
    (local.set $p (call $copy (local.get $p) (i32.const 32) (i32.const 9)))
    (local.set $p (call $write_u32 (local.get $p) (global.get $words)))
    (local.set $p (call $copy (local.get $p) (i32.const 48) (i32.const 9)))
    (local.set $p
      (call $write_u32
        (local.get $p)
        (select
          (i32.add (global.get $newlines) (i32.const 1))
          (i32.const 0)
          (global.get $bytes))))
    (local.set $p (call $copy (local.get $p) (i32.const 64) (i32.const 9)))
    (local.set $p (call $write_u32 (local.get $p) (global.get $bytes)))
    (i32.store8 (local.get $p) (i32.const 125))
    (call $pack (local.get $out) (i32.sub (i32.add (local.get $p) (i32.const 1)) (local.get $out))))

  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (local $found i32) (local $key i32) (local $c i32)
    (global.set $pos (local.get $ptr))
    (global.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $invalid
      (block $object_end
        (call $skip_ws)
        (br_if $invalid (call $at_end))
        (br_if $invalid (i32.ne (call $byte) (i32.const 123)))
        (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
        (call $skip_ws)
        (br_if $invalid (call $at_end))
        (if (i32.eq (call $byte) (i32.const 125))
          (then
            (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
            (br $object_end)))
        (loop $member
          (br_if $invalid (call $at_end))
          (br_if $invalid (i32.ne (call $byte) (i32.const 34)))
          (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
          (local.set $key (call $key_is_text))
          (br_if $invalid (i32.lt_s (local.get $key) (i32.const 0)))
          (call $skip_ws)
          (br_if $invalid (call $at_end))
          (br_if $invalid (i32.ne (call $byte) (i32.const 58)))
          (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
          (call $skip_ws)
          (br_if $invalid (call $at_end))
          (if (i32.and (local.get $key) (i32.eqz (local.get $found)))
            (then
              (if (i32.eq (call $byte) (i32.const 34))
                (then
                  (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
                  (br_if $invalid (i32.eqz (call $stats)))
                  (local.set $found (i32.const 1)))
                (else
                  (br_if $invalid (i32.eqz (call $skip_value)))
                  (local.set $found (i32.const 2)))))
            (else (br_if $invalid (i32.eqz (call $skip_value)))))
          (call $skip_ws)
          (br_if $invalid (call $at_end))
          (local.set $c (call $byte))
          (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
          (if (i32.eq (local.get $c) (i32.const 44))
            (then
              (call $skip_ws)
              (br $member)))
          (br_if $invalid (i32.ne (local.get $c) (i32.const 125)))))
      (call $skip_ws)
      (br_if $invalid (i32.eqz (call $at_end)))
      (if (i32.eq (local.get $found) (i32.const 1))
        (then (return (call $write_stats))))
      (return (call $pack (i32.const 80) (i32.const 24))))
    (call $pack (i32.const 112) (i32.const 24))))
