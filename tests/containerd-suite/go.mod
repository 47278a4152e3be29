module thinlayer-suite

go 1.19
