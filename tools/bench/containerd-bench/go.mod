module thinlayer-cbench

go 1.19
