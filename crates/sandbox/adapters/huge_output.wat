;; huge_output: claims an output the host must refuse. Input starting with `o` -> 64 bytes at
;; 0xFFFFFFC0, outside the one-page memory; any other input -> 0xFFFFFFFF bytes at 0, larger than any
;; output limit.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (if (result i64)
      (i32.and
        (i32.gt_u (local.get $len) (i32.const 0))
        (i32.eq (i32.load8_u (local.get $ptr)) (i32.const 111)))
      (then (i64.const 0xFFFFFFC0_00000040))
      (else (i64.const 0x00000000_FFFFFFFF)))))
