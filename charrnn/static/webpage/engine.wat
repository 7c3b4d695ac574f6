;; charrnn's web page engine: the two kernels a step spends its time in, on WebAssembly SIMD.
;;
;; The page (charrnn/static/webpage/engine.js) lays every weight matrix out in this module's
;; memory, row-major float32, rows padded to a multiple of 4 and columns to a multiple of 8
;; with zeros, and calls `gemv` for each product of a step and `tanh` for its gates. The
;; rest of a step (adding biases, the cell's few products and sums) is cheap next to these
;; and stays in JavaScript.
;;
;; Built by build.mjs (wabt's wat2wasm) into two binaries: engine.wasm exactly as written,
;; and engine-fma.wasm with each multiply-add fused by relaxed SIMD (f32x4.relaxed_madd),
;; which browsers with relaxed SIMD run faster. The page uses the first that validates.
(module
  (import "env" "memory" (memory 1))

  ;; y (rows,) = w (rows, cols) x (cols,): four rows at a time, each with two accumulators
  ;; of four lanes (eight columns per turn), so that x is read once per four rows and
  ;; the adds of one accumulator do not wait on each other. rows % 4 == 0, cols % 8 == 0.
  (func (export "gemv") (param $w i32) (param $x i32) (param $y i32) (param $rows i32) (param $cols i32)
    (local $stride i32) (local $k i32) (local $yend i32) (local $xv v128) 
    (local $w0 i32)
    (local $w1 i32)
    (local $w2 i32)
    (local $w3 i32)
    (local $a0_0 v128)
    (local $a0_1 v128)
    (local $a1_0 v128)
    (local $a1_1 v128)
    (local $a2_0 v128)
    (local $a2_1 v128)
    (local $a3_0 v128)
    (local $a3_1 v128)
    (local.set $stride (i32.shl (local.get $cols) (i32.const 2)))
    (local.set $yend (i32.add (local.get $y) (i32.shl (local.get $rows) (i32.const 2))))
    (local.set $w0 (local.get $w))
    (block $done (br_if $done (i32.eqz (local.get $rows))) (loop $rowloop
    (local.set $w1 (i32.add (local.get $w0) (local.get $stride)))
    (local.set $w2 (i32.add (local.get $w1) (local.get $stride)))
    (local.set $w3 (i32.add (local.get $w2) (local.get $stride)))
    (local.set $a0_0 (v128.const i32x4 0 0 0 0))
    (local.set $a0_1 (v128.const i32x4 0 0 0 0))
    (local.set $a1_0 (v128.const i32x4 0 0 0 0))
    (local.set $a1_1 (v128.const i32x4 0 0 0 0))
    (local.set $a2_0 (v128.const i32x4 0 0 0 0))
    (local.set $a2_1 (v128.const i32x4 0 0 0 0))
    (local.set $a3_0 (v128.const i32x4 0 0 0 0))
    (local.set $a3_1 (v128.const i32x4 0 0 0 0))
    (local.set $k (i32.const 0))
    (loop $kloop
    (local.set $xv (v128.load offset=0 (i32.add (local.get $x) (local.get $k))))
    (local.set $a0_0 (f32x4.add (local.get $a0_0) (f32x4.mul (v128.load offset=0 (i32.add (local.get $w0) (local.get $k))) (local.get $xv))))
    (local.set $a1_0 (f32x4.add (local.get $a1_0) (f32x4.mul (v128.load offset=0 (i32.add (local.get $w1) (local.get $k))) (local.get $xv))))
    (local.set $a2_0 (f32x4.add (local.get $a2_0) (f32x4.mul (v128.load offset=0 (i32.add (local.get $w2) (local.get $k))) (local.get $xv))))
    (local.set $a3_0 (f32x4.add (local.get $a3_0) (f32x4.mul (v128.load offset=0 (i32.add (local.get $w3) (local.get $k))) (local.get $xv))))
    (local.set $xv (v128.load offset=16 (i32.add (local.get $x) (local.get $k))))
    (local.set $a0_1 (f32x4.add (local.get $a0_1) (f32x4.mul (v128.load offset=16 (i32.add (local.get $w0) (local.get $k))) (local.get $xv))))
    (local.set $a1_1 (f32x4.add (local.get $a1_1) (f32x4.mul (v128.load offset=16 (i32.add (local.get $w1) (local.get $k))) (local.get $xv))))
    (local.set $a2_1 (f32x4.add (local.get $a2_1) (f32x4.mul (v128.load offset=16 (i32.add (local.get $w2) (local.get $k))) (local.get $xv))))
    (local.set $a3_1 (f32x4.add (local.get $a3_1) (f32x4.mul (v128.load offset=16 (i32.add (local.get $w3) (local.get $k))) (local.get $xv))))
    (local.set $k (i32.add (local.get $k) (i32.const 32)))
    (br_if $kloop (i32.lt_u (local.get $k) (local.get $stride))))
    (local.set $a0_0 (f32x4.add (local.get $a0_0) (local.get $a0_1)))
    (local.set $a1_0 (f32x4.add (local.get $a1_0) (local.get $a1_1)))
    (local.set $a2_0 (f32x4.add (local.get $a2_0) (local.get $a2_1)))
    (local.set $a3_0 (f32x4.add (local.get $a3_0) (local.get $a3_1)))
    (local.set $a0_0 (f32x4.add (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a0_0) (local.get $a1_0)) (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a0_0) (local.get $a1_0))))
    (local.set $a2_0 (f32x4.add (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a2_0) (local.get $a3_0)) (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a2_0) (local.get $a3_0))))
    (v128.store offset=0 (local.get $y) (f32x4.add (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $a0_0) (local.get $a2_0)) (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $a0_0) (local.get $a2_0))))
    (local.set $w0 (i32.add (local.get $w3) (local.get $stride)))
    (local.set $y (i32.add (local.get $y) (i32.const 16)))
    (br_if $rowloop (i32.lt_u (local.get $y) (local.get $yend)))))
  )

;; dst[i] = tanh(src[i]) for i < n, exactly n values: src and dst may be the same buffer
  ;; or overlap in place, and nothing past dst + n is written (a GRU's r and z gates are
  ;; followed by its n gate).
  ;; A rational approximation, x * p(x^2) / q(x^2) with p of degree 6 and q of degree 3 in
  ;; x^2, on x clamped to +-7.9053 (where tanh rounds to +-1 in float32); below 4e-4 in
  ;; magnitude, x itself. It is within a few float32 units in the last place of tanh, so
  ;; logits differ from charrnn's own step by summation order only, as the products do.
  (func (export "tanh") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $x v128) (local $x2 v128) (local $p v128) (local $q v128) (local $tiny v128) (local $r v128)
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 2))))
    (block $done
      (br_if $done (i32.le_s (local.get $n) (i32.const 0)))
      (loop $next  ;; four values a turn; the last turn may hold one to three
        (local.set $x (v128.load (local.get $src)))
        (local.set $tiny (f32x4.lt (f32x4.abs (local.get $x)) (v128.const f32x4 0.0004 0.0004 0.0004 0.0004)))
        (local.set $x (f32x4.pmax (v128.const f32x4 -7.90531110763549805 -7.90531110763549805 -7.90531110763549805 -7.90531110763549805)
                       (f32x4.pmin (v128.const f32x4 7.90531110763549805 7.90531110763549805 7.90531110763549805 7.90531110763549805) (local.get $x))))
        (local.set $x2 (f32x4.mul (local.get $x) (local.get $x)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $x2) (v128.const f32x4 -2.76076847742355e-16 -2.76076847742355e-16 -2.76076847742355e-16 -2.76076847742355e-16))
                                 (v128.const f32x4 2.00018790482477e-13 2.00018790482477e-13 2.00018790482477e-13 2.00018790482477e-13)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $x2) (local.get $p)) (v128.const f32x4 -8.60467152213735e-11 -8.60467152213735e-11 -8.60467152213735e-11 -8.60467152213735e-11)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $x2) (local.get $p)) (v128.const f32x4 5.12229709037114e-08 5.12229709037114e-08 5.12229709037114e-08 5.12229709037114e-08)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $x2) (local.get $p)) (v128.const f32x4 1.48572235717979e-05 1.48572235717979e-05 1.48572235717979e-05 1.48572235717979e-05)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $x2) (local.get $p)) (v128.const f32x4 6.37261928875436e-04 6.37261928875436e-04 6.37261928875436e-04 6.37261928875436e-04)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $x2) (local.get $p)) (v128.const f32x4 4.89352455891786e-03 4.89352455891786e-03 4.89352455891786e-03 4.89352455891786e-03)))
        (local.set $p (f32x4.mul (local.get $x) (local.get $p)))
        (local.set $q (f32x4.add (f32x4.mul (local.get $x2) (v128.const f32x4 1.19825839466702e-06 1.19825839466702e-06 1.19825839466702e-06 1.19825839466702e-06))
                                 (v128.const f32x4 1.18534705686654e-04 1.18534705686654e-04 1.18534705686654e-04 1.18534705686654e-04)))
        (local.set $q (f32x4.add (f32x4.mul (local.get $x2) (local.get $q)) (v128.const f32x4 2.26843463243900e-03 2.26843463243900e-03 2.26843463243900e-03 2.26843463243900e-03)))
        (local.set $q (f32x4.add (f32x4.mul (local.get $x2) (local.get $q)) (v128.const f32x4 4.89352518554385e-03 4.89352518554385e-03 4.89352518554385e-03 4.89352518554385e-03)))
        (local.set $r (v128.bitselect (local.get $x) (f32x4.div (local.get $p) (local.get $q)) (local.get $tiny)))
        (if (i32.le_u (i32.add (local.get $src) (i32.const 16)) (local.get $end))
          (then (v128.store (local.get $dst) (local.get $r)))
          (else  ;; one to three left: stored lane by lane, nothing past dst + n
            (v128.store32_lane 0 (local.get $dst) (local.get $r))
            (br_if $done (i32.ge_u (i32.add (local.get $src) (i32.const 4)) (local.get $end)))
            (v128.store32_lane offset=4 1 (local.get $dst) (local.get $r))
            (br_if $done (i32.ge_u (i32.add (local.get $src) (i32.const 8)) (local.get $end)))
            (v128.store32_lane offset=8 2 (local.get $dst) (local.get $r))
            (br $done)))
        (local.set $src (i32.add (local.get $src) (i32.const 16)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
        (br_if $next (i32.lt_u (local.get $src) (local.get $end)))))
  )
)
