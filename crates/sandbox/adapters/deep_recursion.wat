;; deep_recursion: unbounded non-tail recursion; must end as a stack overflow, never a crash.
(module
  (memory (export "memory") 1)
  (func $down (param $n i32) (result i32)
    (i32.add (call $down (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "run") (param i32 i32) (result i64)
    (i64.extend_i32_u (call $down (i32.const 0)))))
