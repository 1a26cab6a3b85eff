;; echo: returns its input unchanged (the benchmark's minimal adapter).
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "alloc") (param $len i32) (result i32)
    (local $ptr i32) (local $new i32) (local $size i32)
    (local.set $ptr (global.get $heap))
    (if (i32.lt_s (local.get $len) (i32.const 0)) (then unreachable))
    (local.set $new (i32.add (local.get $ptr) (local.get $len)))
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
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len)))))
